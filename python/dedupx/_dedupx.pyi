from collections.abc import Callable
from typing import Any

__all__ = ["PAGE_SIZE", "__version__", "image_frames", "scan_process_frames"]

__version__: str
PAGE_SIZE: int

def scan_process_frames(
    pid: int,
    *,
    threads: int = 0,
    hash: bool = True,
    proc_root: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]: ...
def image_frames(
    path: str,
    *,
    format: str | None = None,
    threads: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]: ...
