"""dedupx: what each process and guest really costs in memory, and what of it is duplicated.

The package reads as the pipeline does: ``sources`` (a live process, the whole host, a
memory image, a guest's own view) → ``store`` (snapshot directories) → ``analysis`` (each
takes a capture's ``Frames``) → ``report`` (dicts, terminal tables) → ``cli``, all on one
``model`` (Frames, page classes, coverage, units). Metric definitions: docs/metrics.md.
"""

from __future__ import annotations

from dedupx._dedupx import __version__
from dedupx.analysis.compare import compare
from dedupx.analysis.containers import containers
from dedupx.analysis.dedup_matrix import dedup_matrix, group_matrix
from dedupx.analysis.density import density, density_summary
from dedupx.analysis.device_cost import device_costs
from dedupx.analysis.duplicates import duplicates, top_duplicates
from dedupx.analysis.footprint import footprint, group_footprints
from dedupx.analysis.guest_memory import inactive_bloat, lru_pages
from dedupx.analysis.incremental_cost import incremental_cost, uss_breakdown
from dedupx.analysis.ksm import ksm_prediction
from dedupx.analysis.page_counts import page_counts
from dedupx.exceptions import (
    CorruptAgentFile,
    CorruptImage,
    CorruptSnapshot,
    DedupxError,
    DedupxIOError,
    FrameExportError,
    ImageTooLarge,
    KernelUnsupported,
    MissingFrames,
    NotAGuest,
    OutputError,
    PermissionDenied,
    PfnHidden,
    ProcessGone,
    ProcessNotFound,
    ProcParseError,
    QmpError,
    SnapshotVersionError,
    UsageError,
)
from dedupx.model.frames import Frames, Provenance, as_frames
from dedupx.report.snapshot import snapshot_report
from dedupx.sources.capture import load
from dedupx.sources.guest_view import GuestView, read_guest_agent, read_guest_qga
from dedupx.sources.host import snapshot
from dedupx.sources.image import MemoryImage, image_snapshot, read_image
from dedupx.sources.process import ProcessScan, scan
from dedupx.store.snapshot import open_snapshot

__all__ = [
    "CorruptAgentFile",
    "CorruptImage",
    "CorruptSnapshot",
    "DedupxError",
    "DedupxIOError",
    "FrameExportError",
    "Frames",
    "GuestView",
    "ImageTooLarge",
    "KernelUnsupported",
    "MemoryImage",
    "MissingFrames",
    "NotAGuest",
    "OutputError",
    "PermissionDenied",
    "PfnHidden",
    "ProcParseError",
    "ProcessGone",
    "ProcessNotFound",
    "ProcessScan",
    "Provenance",
    "QmpError",
    "SnapshotVersionError",
    "UsageError",
    "__version__",
    "as_frames",
    "compare",
    "containers",
    "dedup_matrix",
    "density",
    "density_summary",
    "device_costs",
    "duplicates",
    "footprint",
    "group_footprints",
    "group_matrix",
    "image_snapshot",
    "inactive_bloat",
    "incremental_cost",
    "ksm_prediction",
    "load",
    "lru_pages",
    "open_snapshot",
    "page_counts",
    "read_guest_agent",
    "read_guest_qga",
    "read_image",
    "scan",
    "snapshot",
    "snapshot_report",
    "top_duplicates",
    "uss_breakdown",
]
