from collections.abc import Callable
from typing import NotRequired, Protocol, TypedDict, final, type_check_only

__all__ = [
    "PAGE_SIZE",
    "HostSnapshot",
    "__version__",
    "copy_and_hash_limit",
    "image_frames",
    "read_agent_file",
    "scan_process_frames",
]

__version__: str
PAGE_SIZE: int

@type_check_only
class _ArrowStream(Protocol):
    """A table handed over through the Arrow PyCapsule stream (pl.DataFrame(t))."""

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...

@type_check_only
class _ProcessInfo(TypedDict):
    pid: int
    ppid: int
    comm: str
    cmdline: list[str]

@type_check_only
class _ScanStats(TypedDict):
    present_pages: int
    swapped_pages: int
    distinct_pfns: int
    hashed_pfns: int
    unreadable_pfns: int
    vanished_pfns: int
    swap_slots: int
    swap_hashed: int
    swap_unread_reason: str | None
    threads: int
    stage_ms: dict[str, int]

@type_check_only
class _ProcessFrames(TypedDict):
    vmas: _ArrowStream
    pages: _ArrowStream
    info: _ProcessInfo
    stats: _ScanStats

@type_check_only
class _ImageFrames(TypedDict):
    frames: _ArrowStream
    format: str
    pages: int
    segments: list[tuple[int, int]]

@type_check_only
class _AgentFile(TypedDict):
    meta_json: str
    frames: _ArrowStream

@type_check_only
class _CachedFileName(TypedDict):
    path: str

@type_check_only
class _CachedFile(_CachedFileName, total=False):
    cached_pages: int
    pages: int
    error: str

@type_check_only
class _PageCacheWalk(TypedDict):
    mounts: list[str]
    files: int
    files_cached: int
    pages_cached: int
    pages_hashed: int
    pages_vanished: int
    unreadable: int
    links_skipped: int
    seconds: float

@type_check_only
class _HostStats(TypedDict):
    processes: int
    exited: int
    denied: int
    present_pages: int
    distinct_pfns: int
    hashed_pfns: int
    unreadable_pfns: int
    vanished_pfns: int
    threads: int
    stage_ms: dict[str, int]
    physical_source: tuple[str, str] | None
    physical_source_notes: list[str]
    ram_ranges: list[tuple[int, int]]
    cached_files: list[_CachedFile]
    file_cache_frames: int
    page_cache: NotRequired[_PageCacheWalk]

def scan_process_frames(
    pid: int,
    *,
    threads: int = 0,
    hash: bool = True,
    proc_root: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> _ProcessFrames: ...
def read_agent_file(path: str) -> _AgentFile: ...
def copy_and_hash_limit(
    pid: int, start: int, pages: int, *, threads: int = 0, skip_zero: bool = False
) -> float: ...
def image_frames(
    path: str,
    *,
    format: str | None = None,
    threads: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
    start: int = 0,
    count: int | None = None,
) -> _ImageFrames: ...

@type_check_only
class _ChunkCoverage(TypedDict):
    pages: int
    hashed: int
    hashed_mapped: int
    no_page: int
    free: int
    unmapped_page_cache: int
    unmapped_anon_shmem: int
    mapped_unread: int

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
        page_cache: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> HostSnapshot: ...
    def stats(self) -> _HostStats: ...
    def processes(self) -> _ArrowStream: ...
    def vmas(self) -> _ArrowStream: ...
    def process_count(self) -> int: ...
    def page_windows(self, index: int, max_pages: int) -> list[tuple[int, int]]: ...
    def pages(self, index: int, start: int, end: int) -> _ArrowStream: ...
    def ram_ranges(self) -> list[tuple[int, int]]: ...
    def frames(self, start: int, end: int) -> tuple[_ArrowStream, _ChunkCoverage]: ...
