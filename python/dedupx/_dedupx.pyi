from collections.abc import Callable
from typing import Any

__version__: str
PAGE_SIZE: int

def scan_process_frames(
    pid: int,
    *,
    threads: int = 0,
    hash: bool = True,
    proc_root: str = "/proc",
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]: ...
