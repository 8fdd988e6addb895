"""dedupx: what each process and guest really costs in memory, and what of it is duplicated."""

from __future__ import annotations

from dedupx._dedupx import __version__
from dedupx.analysis.compare import compare
from dedupx.analysis.dedup_matrix import dedup_matrix
from dedupx.analysis.duplicates import duplicates, top_duplicates
from dedupx.analysis.footprint import footprint
from dedupx.analysis.incremental_cost import incremental_cost
from dedupx.analysis.ksm import ksm_prediction
from dedupx.exceptions import (
    CorruptAgentFile,
    CorruptImage,
    CorruptSnapshot,
    DedupxError,
    DedupxIOError,
    KernelUnsupported,
    NotAGuest,
    OutputError,
    PermissionDenied,
    PfnHidden,
    ProcessGone,
    ProcessNotFound,
    ProcParseError,
    QmpError,
    SnapshotVersionError,
)
from dedupx.guest_agent import GuestView, read_guest_agent
from dedupx.host_snapshot import snapshot
from dedupx.memory_image import MemoryImage, image_snapshot, read_image
from dedupx.process_scan import ProcessScan, scan
from dedupx.qemu.qga import read_guest_qga
from dedupx.snapshot import Snapshot, open_snapshot
from dedupx.snapshot_report import snapshot_report

__all__ = [
    "CorruptAgentFile",
    "CorruptImage",
    "CorruptSnapshot",
    "DedupxError",
    "DedupxIOError",
    "GuestView",
    "KernelUnsupported",
    "MemoryImage",
    "NotAGuest",
    "OutputError",
    "PermissionDenied",
    "PfnHidden",
    "ProcParseError",
    "ProcessGone",
    "ProcessNotFound",
    "ProcessScan",
    "QmpError",
    "Snapshot",
    "SnapshotVersionError",
    "__version__",
    "compare",
    "dedup_matrix",
    "duplicates",
    "footprint",
    "image_snapshot",
    "incremental_cost",
    "ksm_prediction",
    "open_snapshot",
    "read_guest_agent",
    "read_guest_qga",
    "read_image",
    "scan",
    "snapshot",
    "snapshot_report",
    "top_duplicates",
]
