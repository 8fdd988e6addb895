from collections.abc import Callable
from typing import Any, final

__all__ = [
    "PAGE_SIZE",
    "HostSnapshot",
    "__version__",
    "image_frames",
    "read_agent_file",
    "scan_process_frames",
]

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
def read_agent_file(path: str) -> dict[str, Any]: ...
def image_frames(
    path: str,
    *,
    format: str | None = None,
    threads: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]: ...

@final
class HostSnapshot:
    def __new__(
        cls,
        *,
        proc_root: str | None = None,
        dev_root: str | None = None,
        threads: int = 0,
        hash: bool = True,
        phys: str | None = None,
        iomem: str | None = None,
        cached_files: list[str] = ...,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> HostSnapshot: ...
    def stats(self) -> dict[str, Any]: ...
    def processes(self) -> Any: ...
    def vmas(self) -> Any: ...
    def process_count(self) -> int: ...
    def page_windows(self, index: int, max_pages: int) -> list[tuple[int, int]]: ...
    def pages(self, index: int, start: int, end: int) -> Any: ...
    def ram_ranges(self) -> list[tuple[int, int]]: ...
    def frames(self, start: int, end: int) -> Any: ...
