"""Writing frames as Parquet into a directory that appears whole or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from dedupx.exceptions import OutputError

FrameSource = pl.DataFrame | Iterable[pl.DataFrame]


def write_frames(
    target: str | os.PathLike[str],
    frames: Mapping[str, FrameSource],
    manifest: dict[str, Any] | Callable[[], dict[str, Any]],
) -> Path:
    """Writes each frame as ``NAME.parquet`` (or, given an iterable of chunks, as
    ``NAME/part-*.parquet``, streamed) and ``manifest.json`` with the files and their row
    counts added, into ``target``. ``manifest`` may be a function, called once the frames
    are written (for figures only known then).

    Everything goes into a hidden temporary sibling first, which is renamed into place
    only when complete: a full disk or a kill leaves no directory that looks finished.
    Files are 0600 because they hold hashes of memory and command lines.
    """
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"{target} exists and is not an empty directory: choose a new path")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=parent))
    except OSError as e:
        raise OutputError(f"cannot create {target}: {e.strerror}") from None
    try:
        files: dict[str, str] = {}
        rows: dict[str, int] = {}
        for name, frame in frames.items():
            if isinstance(frame, pl.DataFrame):
                _write_part(frame, tmp / f"{name}.parquet")
                files[name], rows[name] = f"{name}.parquet", frame.height
            else:
                (tmp / name).mkdir(mode=0o700)
                rows[name] = 0
                for i, chunk in enumerate(frame):
                    _write_part(chunk, tmp / name / f"part-{i:05d}.parquet")
                    rows[name] += chunk.height
                files[name] = name
        mpath = tmp / "manifest.json"
        with open(mpath, "w", encoding="utf-8") as f:
            m = manifest() if callable(manifest) else manifest
            json.dump({**m, "files": files, "rows": rows}, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(mpath, 0o600)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()  # an empty directory the user made for us
        os.rename(tmp, target)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write {target}: {e.strerror or e}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_part(frame: pl.DataFrame, path: Path) -> None:
    try:
        frame.write_parquet(path)
    except pl.exceptions.ComputeError as e:
        # polars reports a full disk as a ComputeError wrapping the OS error.
        raise OSError(str(e).splitlines()[0]) from None
    os.chmod(path, 0o600)
