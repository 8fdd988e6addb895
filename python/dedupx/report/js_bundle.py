"""The Vega, Vega-Lite and vega-embed JavaScript a self-contained report inlines.

vl-convert bundles it on every call, which takes about 3 s; the bundle depends only on the
vl-convert version and the snippet, so it is kept in the user's cache directory and built
once per version. A cache that cannot be written (a read-only home) only costs the time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from importlib import metadata
from pathlib import Path

import vl_convert


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dedupx"


def javascript_bundle(snippet: str) -> str:
    """vl-convert's bundle ending with ``snippet``, from the cache when it holds it."""
    version = metadata.version("vl-convert-python")
    key = hashlib.blake2b(f"{version}\0{snippet}".encode(), digest_size=12)
    path = cache_dir() / f"vega-bundle-{key.hexdigest()}.js"
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        pass
    bundle = vl_convert.javascript_bundle(snippet)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed: a report never inlines half a bundle.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".vega-bundle-")
        with os.fdopen(fd, "w") as f:
            f.write(bundle)
        os.replace(tmp, path)
    except OSError:
        pass
    return bundle


__all__ = ["cache_dir", "javascript_bundle"]
