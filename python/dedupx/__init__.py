"""dedupx: what each process and guest really costs in memory, and what of it is duplicated."""

from __future__ import annotations

from dedupx._dedupx import __version__
from dedupx.analysis.duplicates import duplicates, top_duplicates
from dedupx.analysis.footprint import footprint
from dedupx.exceptions import (
    DedupxError,
    DedupxIOError,
    KernelUnsupported,
    OutputError,
    PermissionDenied,
    PfnHidden,
    ProcessGone,
    ProcessNotFound,
    ProcParseError,
)
from dedupx.process_scan import ProcessScan, scan

__all__ = [
    "DedupxError",
    "DedupxIOError",
    "KernelUnsupported",
    "OutputError",
    "PermissionDenied",
    "PfnHidden",
    "ProcParseError",
    "ProcessGone",
    "ProcessNotFound",
    "ProcessScan",
    "__version__",
    "duplicates",
    "footprint",
    "scan",
    "top_duplicates",
]
