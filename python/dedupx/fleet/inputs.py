"""A fleet's inputs: fingerprint files and snapshot directories, local or at any fsspec
URL, named by paths and globs. Each is read on its own, so one damaged input costs only
itself: it comes back as an error naming it, and the rest of the fleet goes on."""

from __future__ import annotations

import io
from dataclasses import dataclass

import fsspec  # type: ignore[import-untyped]
import polars as pl

from dedupx.analysis.fingerprint import SCHEMA, fingerprint
from dedupx.exceptions import DedupxError
from dedupx.model.content_key import content_key
from dedupx.store.snapshot import open_snapshot

# The most a single fingerprint file may be: 2^20 contents is 17 MiB; a sampled host more.
MAX_FINGERPRINT_BYTES = 1 << 30


@dataclass(frozen=True)
class Loaded:
    """One input: its fingerprint rows, or why it could not be read."""

    path: str
    rows: pl.DataFrame | None
    error: str | None


def expand(patterns: list[str]) -> list[str]:
    """Every input the paths and globs name, each once, in order (a glob that matches
    nothing names nothing; a plain path is kept, so that its absence is reported)."""
    out: list[str] = []
    for pattern in patterns:
        if any(c in pattern for c in "*?["):
            fs, path = fsspec.core.url_to_fs(pattern)
            local = "://" not in pattern
            out += [n if local else fs.unstrip_protocol(n) for n in sorted(fs.glob(path))]
        else:
            out.append(pattern)
    return list(dict.fromkeys(out))


def load(path: str) -> Loaded:
    """A fingerprint file as it is, or a local snapshot directory fingerprinted now."""
    try:
        fs, target = fsspec.core.url_to_fs(path)
        if fs.isdir(target):
            return Loaded(path, fingerprint(open_snapshot(target)), None)
        if fs.size(target) > MAX_FINGERPRINT_BYTES:
            raise DedupxError(f"larger than {MAX_FINGERPRINT_BYTES >> 20} MiB")
        with fs.open(target, "rb") as f:
            rows = pl.read_parquet(io.BytesIO(f.read()))
        missing = set(SCHEMA) - set(rows.columns)
        if missing:
            raise DedupxError(f"not a dedupx fingerprint: it lacks {sorted(missing)}")
        if rows.schema["hash"] == pl.Binary:  # written before fingerprints held keys
            if not rows.select((pl.col("hash").bin.size() == 16).all()).item():
                raise DedupxError("a hash is not 16 bytes")  # it would become a null key
            rows = rows.with_columns(content_key(pl.col("hash")))
        return Loaded(path, rows.select([pl.col(k).cast(t) for k, t in SCHEMA.items()]), None)
    except (DedupxError, OSError, ValueError) as e:
        return Loaded(
            path, None, f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        )
    except Exception as e:  # polars raises several types for damaged Parquet
        return Loaded(path, None, f"{path}: unreadable ({type(e).__name__}: {str(e)[:200]})")


__all__ = ["Loaded", "expand", "load"]
