"""Snapshots: a directory of Parquet frames plus manifest.json, read back as lazy frames.

A snapshot is written into a hidden temporary sibling and renamed into place when complete
(see parquet_output), so a directory that opens is a whole one.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import __version__
from dedupx.exceptions import CorruptSnapshot, SnapshotVersionError

FORMAT_VERSION = 1
FRAME_NAMES = ("processes", "vmas", "pages", "frames")


@dataclass
class Snapshot:
    """An opened snapshot: its manifest and its frames as lazy polars frames (``None``
    where the snapshot has no such frame, e.g. ``pages`` of a memory image)."""

    path: Path
    manifest: dict[str, Any]
    frames: pl.LazyFrame
    pages: pl.LazyFrame | None = None
    vmas: pl.LazyFrame | None = None
    processes: pl.LazyFrame | None = None
    extra: dict[str, pl.LazyFrame] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.manifest.get("source", "unknown"))

    def __repr__(self) -> str:
        return f"Snapshot({str(self.path)!r}, source={self.source!r})"


def base_manifest(kind: str, source: str, coverage: dict[str, Any]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "dedupx_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "page_size": 4096,
        "source": source,
        "coverage": coverage,
        "command": sys.argv,
    }


def open_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Opens a snapshot directory written by ``dedupx snapshot`` or ``dedupx image``.

    Raises ``CorruptSnapshot`` for a directory that is not a complete dedupx snapshot or
    whose files are damaged, ``SnapshotVersionError`` for one from a newer format.
    """
    root = Path(path)
    mpath = root / "manifest.json"
    if not root.is_dir():
        raise CorruptSnapshot(f"{root} is not a snapshot directory")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorruptSnapshot(
            f"{root} has no manifest.json: not a complete dedupx snapshot"
        ) from None
    except (OSError, ValueError) as e:
        raise CorruptSnapshot(f"{mpath} is unreadable: {e}") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise CorruptSnapshot(f"{mpath} has no format_version: not a dedupx snapshot")
    if version > FORMAT_VERSION:
        raise SnapshotVersionError(
            f"{root} has snapshot format {version}; this dedupx ({__version__}) reads up to "
            f"{FORMAT_VERSION}: upgrade dedupx"
        )
    files = manifest.get("files", {})
    rows = manifest.get("rows", {})
    lazy: dict[str, pl.LazyFrame] = {}
    for name, rel in files.items():
        lazy[name] = _open_frame(root, name, rel, rows.get(name))
    if "frames" not in lazy:
        raise CorruptSnapshot(f"{root} lists no frames file")
    return Snapshot(
        path=root,
        manifest=manifest,
        frames=lazy.pop("frames"),
        pages=lazy.pop("pages", None),
        vmas=lazy.pop("vmas", None),
        processes=lazy.pop("processes", None),
        extra=lazy,
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
