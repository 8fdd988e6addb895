"""A saved capture by path: a snapshot directory, or a memory image file read now."""

from __future__ import annotations

import os
from pathlib import Path

from dedupx.exceptions import DedupxIOError
from dedupx.model.frames import Frames
from dedupx.sources.image import read_image
from dedupx.store.snapshot import open_snapshot


def load(path: str | os.PathLike[str], *, threads: int = 0) -> Frames:
    """A snapshot directory opened lazily, or a memory image (raw, ELF core, LiME) read
    and hashed: either way, the Frames every analysis takes."""
    p = Path(path)
    if p.is_dir():
        return open_snapshot(p)
    if not p.exists():
        raise DedupxIOError(f"{p} does not exist")
    return read_image(p, threads=threads).to_frames()


__all__ = ["load"]
