"""Writing frames as Parquet into a directory that appears whole or not at all."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl

from dedupx.exceptions import OutputError

FrameSource = pl.DataFrame | Iterable[pl.DataFrame]
# Inside a temporary directory of earlier dedupx versions, whose names did not carry the
# writer: the PID of the process writing it.
OWNER = ".owner"


def write_frames(
    target: str | os.PathLike[str],
    frames: Mapping[str, FrameSource],
    manifest: dict[str, Any] | Callable[[], dict[str, Any]],
) -> Path:
    """Writes each frame as ``NAME.parquet`` (or, given an iterable of chunks, as
    ``NAME/part-*.parquet``, streamed) and ``manifest.json`` with the files and their row
    counts added, into ``target``. ``manifest`` may be a function, called once the frames
    are written (for figures only known then).

    Everything goes into a hidden temporary sibling first, named for this process (PID and
    start time, see ``writer_tag``) from the moment it exists, which is renamed into place
    only when complete and durable: every file and directory is fsynced before the rename,
    and the parent after it, so neither a kill nor a power loss leaves a directory that
    looks finished but is not. Files are 0600 because they hold hashes of memory and
    command lines.
    """
    target = Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise OutputError(f"{target} exists and is not an empty directory: choose a new path")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(
            tempfile.mkdtemp(
                prefix=f".{target.name}.{writer_tag(os.getpid())}.", suffix=".partial", dir=parent
            )
        )
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
                _fsync_dir(tmp / name)
                files[name] = name
        mpath = tmp / "manifest.json"
        with open(mpath, "w", encoding="utf-8") as f:
            m = manifest() if callable(manifest) else manifest
            json.dump({**m, "files": files, "rows": rows}, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(mpath, 0o600)
        _fsync_dir(tmp)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()  # an empty directory the user made for us
        os.rename(tmp, target)
        _fsync_dir(parent)
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
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Makes a directory's entries durable (the files in it are fsynced one by one)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writer_tag(pid: int) -> str:
    """``w<PID>-<start time>``: who writes a temporary directory, in its name, so that a
    kill at any moment leaves a directory whose writer is known (a file written into it
    afterwards would leave a window), and a later process that reuses the PID is not taken
    for the writer."""
    return f"w{pid}-{_start_time(pid)}"


def _start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name may hold spaces and parentheses: count fields after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else 0


def _writer_alive(tmp: Path, target_name: str) -> bool | None:
    """Whether the writer named in a temporary directory's name is still running (None if
    the name names none)."""
    middle = tmp.name[len(target_name) + 2 : -len(".partial")]
    m = re.match(r"w(\d+)-(\d+)\.", middle)
    if m is None:
        return None
    pid, start = int(m[1]), int(m[2])
    return _alive(pid) and _start_time(pid) == start


def remove_stale_partials(target: str | os.PathLike[str]) -> list[Path]:
    """Removes the temporary directories that earlier writes of ``target`` left behind
    when they were killed: those whose writer is gone (a write in progress is left alone).
    Returns what it removed."""
    target = Path(target)
    removed = []
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.partial"):
        alive = _writer_alive(tmp, target.name)
        if alive is None:
            # Named before the writer went into the name: its .owner file, if it has one.
            try:
                owner = int((tmp / OWNER).read_text())
            except (OSError, ValueError):
                owner = 0
            alive = bool(owner and _alive(owner)) or (not owner and _younger_than(tmp, 60.0))
        if alive:
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
    return removed


def _younger_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
