"""Memory images (raw dumps, ELF cores such as QEMU's dump-guest-memory, LiME) as frames."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dedupx import _dedupx
from dedupx.model.coverage import image_coverage
from dedupx.model.frames import Frames, Provenance
from dedupx.sources.process import ProgressCallback
from dedupx.store.parquet import write_frames
from dedupx.store.snapshot import base_manifest

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

    @property
    def source(self) -> str:
        return f"image:{self.format}"

    def to_frames(self) -> Frames:
        """The image as the input every analysis takes: frames only, without flags (anon
        and file cannot be told apart in an image)."""
        return Frames(
            frames=self.frames.lazy(),
            provenance=Provenance(
                kind="image",
                source=self.source,
                coverage=image_coverage(self.source, self.pages),
                path=self.path,
            ),
        )


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
    raw = _dedupx.image_frames(os.fspath(path), format=format, threads=threads, progress=progress)
    return MemoryImage(
        path=Path(path),
        format=raw["format"],
        pages=raw["pages"],
        segments=[(int(a), int(n)) for a, n in raw["segments"]],
        frames=pl.DataFrame(raw["frames"]),
    )


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
    manifest = base_manifest("image", image.source, image_coverage(image.source, image.pages))
    manifest["image"] = {
        "path": str(Path(path).resolve()),
        "format": image.format,
        "segments": [{"paddr": p, "bytes": n} for p, n in image.segments],
        "zero_pages": int(image.frames["zero"].sum()),
    }
    return write_frames(out, {"frames": image.frames}, manifest)


__all__ = ["FORMATS", "MemoryImage", "image_snapshot", "read_image"]
