"""Memory images (raw dumps, ELF cores such as QEMU's dump-guest-memory, LiME) as frames."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from dedupx import _dedupx
from dedupx.parquet_output import write_frames
from dedupx.process_scan import ProgressCallback
from dedupx.snapshot import base_manifest

FORMATS = ("raw", "elf", "lime")


@dataclass(frozen=True)
class MemoryImage:
    """Every page of an image: ``frames`` has ``pfn`` (physical page number), ``hash``,
    ``zero``; ``segments`` lists the (physical address, bytes) ranges it holds."""

    path: Path
    format: str
    pages: int
    segments: list[tuple[int, int]]
    frames: pl.DataFrame


def read_image(
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    threads: int = 0,
    progress: ProgressCallback | None = None,
) -> MemoryImage:
    """Reads and hashes every page of a memory image. The format is detected by magic
    (ELF, LiME; anything else is a raw flat dump) unless ``format`` names one.

    Raises ``CorruptImage`` for truncated, mis-labelled, overlapping or misaligned images.
    """
    raw: dict[str, Any] = _dedupx.image_frames(
        os.fspath(path), format=format, threads=threads, progress=progress
    )
    return MemoryImage(
        path=Path(path),
        format=raw["format"],
        pages=raw["pages"],
        segments=[tuple(s) for s in raw["segments"]],
        frames=pl.DataFrame(raw["frames"]),
    )


def image_coverage(image: MemoryImage) -> dict[str, Any]:
    zero = int(image.frames["zero"].sum())
    return {
        "source": f"image:{image.format}",
        "pages_hashed": image.pages,
        "pages_of_ram": image.pages,
        "zero_pages": zero,
        "not_covered": {},
    }


def image_snapshot(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    threads: int = 0,
    progress: ProgressCallback | None = None,
) -> Path:
    """Turns a memory image into a snapshot directory (frames keyed by physical page)."""
    image = read_image(path, format=format, threads=threads, progress=progress)
    manifest = base_manifest("image", f"image:{image.format}", image_coverage(image))
    manifest["image"] = {
        "path": str(Path(path).resolve()),
        "format": image.format,
        "segments": [{"paddr": p, "bytes": n} for p, n in image.segments],
    }
    return write_frames(out, {"frames": image.frames}, manifest)
