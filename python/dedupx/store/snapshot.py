"""Snapshot directories: Parquet frames plus manifest.json, opened as lazy Frames.

A snapshot is written into a hidden temporary sibling and renamed into place when complete
(see dedupx.store.parquet), so a directory that opens is a whole one. Format 2 states
coverage in the one schema of dedupx.model.coverage; format 1 snapshots are read and upgraded.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import socket
import sys
from pathlib import Path
from typing import Any

import polars as pl

from dedupx._dedupx import __version__
from dedupx.exceptions import CorruptSnapshot, SnapshotVersionError
from dedupx.model.coverage import upgrade_v1
from dedupx.model.frames import Frames, Provenance
from dedupx.model.units import PAGE_SIZE

FORMAT_VERSION = 2


def base_manifest(kind: str, source: str, coverage: dict[str, Any]) -> dict[str, Any]:
    """What every snapshot's manifest.json says besides its files and row counts."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "dedupx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "page_size": PAGE_SIZE,
        "source": source,
        "coverage": coverage,
        "command": sys.argv,
    }


MAX_MANIFEST_BYTES = 16 << 20  # a real one is a few KiB; more is not ours
FRAME_NAME = re.compile(r"^[a-z_]{1,32}$")
FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")  # in the snapshot, no path


def parse_manifest(text: bytes, where: str = "manifest.json") -> dict[str, Any]:
    """A manifest's JSON, checked for the shape every reader relies on: a format version,
    ``files`` naming each frame's file or directory inside the snapshot (never a path out
    of it), ``rows`` as counts, ``coverage`` as an object (format 1's upgraded). Anything
    else is a ``CorruptSnapshot`` naming ``where``."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise CorruptSnapshot(f"{where} is larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    try:
        manifest = json.loads(text)
    except RecursionError:
        raise CorruptSnapshot(f"{where} is nested too deep to be a manifest") from None
    except ValueError as e:  # UnicodeDecodeError among them
        raise CorruptSnapshot(f"{where} is not JSON: {e}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CorruptSnapshot(f"{where} has no format_version: not a dedupx snapshot")
    files, rows = manifest.get("files", {}), manifest.get("rows", {})
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and FRAME_NAME.match(k) and isinstance(v, str) and FILE_NAME.match(v)
        for k, v in files.items()
    ):
        raise CorruptSnapshot(f"{where}: `files` must name each frame's file in the snapshot")
    if not isinstance(rows, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rows.values()
    ):
        raise CorruptSnapshot(f"{where}: `rows` must be counts of rows")
    cov = manifest.get("coverage", {})
    if not isinstance(cov, dict):
        raise CorruptSnapshot(f"{where}: `coverage` must be an object")
    try:
        cov = upgrade_v1(cov)
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptSnapshot(f"{where}: format 1 coverage is damaged: {e!r}") from None
    counts = [cov.get(k, 0) for k in ("pages_in_scope", "pages_hashed")]
    not_covered = cov.get("not_covered", {})
    if isinstance(not_covered, dict):
        counts += list(not_covered.values())
    if not isinstance(not_covered, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts
    ):
        raise CorruptSnapshot(f"{where}: `coverage` must hold counts of pages")
    manifest["coverage"] = cov
    return manifest


def open_snapshot(path: str | os.PathLike[str]) -> Frames:
    """Opens a snapshot directory written by ``dedupx snapshot``, ``dedupx image`` or
    ``dedupx scan --parquet`` as Frames (``provenance.manifest`` holds its manifest).

    Raises ``CorruptSnapshot`` for a directory that is not a complete dedupx snapshot or
    whose files are damaged, ``SnapshotVersionError`` for one from a newer format.
    """
    root = Path(path)
    mpath = root / "manifest.json"
    if not root.is_dir():
        raise CorruptSnapshot(f"{root} is not a snapshot directory")
    try:
        text = mpath.read_bytes()
    except FileNotFoundError:
        raise CorruptSnapshot(
            f"{root} has no manifest.json: not a complete dedupx snapshot"
        ) from None
    except OSError as e:
        raise CorruptSnapshot(f"{mpath} is unreadable: {e}") from None
    manifest = parse_manifest(text, str(mpath))
    version = manifest["format_version"]
    if version > FORMAT_VERSION:
        raise SnapshotVersionError(
            f"{root} has snapshot format {version}; this dedupx ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade dedupx"
        )
    files, rows = manifest["files"], manifest.get("rows", {})
    lazy = {name: _open_frame(root, name, rel, rows.get(name)) for name, rel in files.items()}
    if "frames" not in lazy:
        raise CorruptSnapshot(f"{root} lists no frames file")
    coverage = manifest.get("coverage", {})
    processes = lazy.get("processes")
    if version == 1 and processes is not None:  # format 1 joined cmdline with spaces
        processes = processes.with_columns(pl.col("cmdline").str.split(" "))
    return Frames(
        frames=lazy["frames"],
        pages=lazy.get("pages"),
        vmas=lazy.get("vmas"),
        processes=processes,
        gpa_map=lazy.get("gpa_map"),
        provenance=Provenance(
            kind=str(manifest.get("kind", "unknown")),
            source=str(manifest.get("source", "unknown")),
            coverage=coverage,
            path=root,
            manifest=manifest,
        ),
    )


def _open_frame(root: Path, name: str, rel: str, expected_rows: int | None) -> pl.LazyFrame:
    target = root / rel
    parts = sorted(target.glob("*.parquet")) if target.is_dir() else [target]
    if not parts or not all(p.is_file() for p in parts):
        raise CorruptSnapshot(f"{root} is missing {rel}: the snapshot is incomplete")
    try:
        # Reading each footer finds truncated and damaged files now, not mid-analysis.
        n = sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in parts)
    except Exception as e:  # polars raises several types for damaged files
        raise CorruptSnapshot(f"{rel} in {root} is damaged: {str(e).splitlines()[0]}") from None
    if expected_rows is not None and n != expected_rows:
        raise CorruptSnapshot(f"{rel} in {root} has {n} rows, the manifest says {expected_rows}")
    return pl.scan_parquet(parts)


__all__ = ["FORMAT_VERSION", "base_manifest", "open_snapshot", "parse_manifest"]
