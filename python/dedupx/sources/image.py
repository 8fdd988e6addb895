"""Memory images (raw dumps, ELF cores such as QEMU's dump-guest-memory, LiME) as frames."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from dedupx import _dedupx
from dedupx.exceptions import ImageTooLarge
from dedupx.model.coverage import image_coverage
from dedupx.model.frames import Frames, Provenance
from dedupx.model.units import PAGE_SIZE
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


# Pages hashed at once when an image becomes a snapshot: about 100 MiB of tables (25 bytes
# a page while hashing, the Arrow table after), whatever size the image declares.
WINDOW_PAGES = 1 << 22
# The most memory an image may declare unless the caller allows more: a terabyte is about
# 270 million frame rows, several minutes of work and hundreds of MiB of Parquet even when
# it is all holes.
GIB = 1 << 30
MAX_IMAGE_BYTES = 1024 * GIB


def image_snapshot(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    format: str | None = None,
    threads: int = 0,
    progress: ProgressCallback | None = None,
    window_pages: int = WINDOW_PAGES,
    max_bytes: int = MAX_IMAGE_BYTES,
) -> Path:
    """Turns a memory image into a snapshot directory (frames keyed by physical page),
    hashed and written ``window_pages`` at a time: memory is bounded by the window, not by
    the size the image declares (a sparse file can declare a terabyte). An image declaring
    more than ``max_bytes`` of memory raises ``ImageTooLarge`` before anything is read."""
    head = _dedupx.image_frames(os.fspath(path), format=format, threads=threads, count=0)
    total, image_format = int(head["pages"]), str(head["format"])
    if total * PAGE_SIZE > max_bytes:
        raise ImageTooLarge(
            f"{path} declares {total * PAGE_SIZE / GIB:,.0f} GiB of memory, more than the "
            f"{max_bytes / GIB:,.0f} GiB allowed: raise --max-gib to read it"
        )
    source = f"image:{image_format}"
    zero_pages = 0

    def windows() -> Iterator[pl.DataFrame]:
        nonlocal zero_pages
        for start in range(0, max(total, 1), window_pages):

            def report(stage: str, done: int, _: int, start: int = start) -> None:
                if progress is not None:
                    progress(stage, start + done, total)

            raw = _dedupx.image_frames(
                os.fspath(path),
                format=image_format,
                threads=threads,
                progress=report,
                start=start,
                count=window_pages,
            )
            chunk = pl.DataFrame(raw["frames"])
            zero_pages += int(chunk["zero"].sum())
            yield chunk

    def manifest() -> dict[str, object]:
        m = base_manifest("image", source, image_coverage(source, total))
        m["image"] = {
            "path": str(Path(path).resolve()),
            "format": image_format,
            "segments": [{"paddr": int(p), "bytes": int(n)} for p, n in head["segments"]],
            "zero_pages": zero_pages,
        }
        return m

    return write_frames(out, {"frames": windows()}, manifest)


__all__ = ["FORMATS", "MemoryImage", "image_snapshot", "read_image"]
