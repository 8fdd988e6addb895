"""The errors dedupx raises. Each one carries a message a person can act on.

The Rust core raises these same classes (it imports them from here), so ``except
dedupx.DedupxError`` catches every expected failure and nothing else.
"""

from __future__ import annotations


class DedupxError(Exception):
    """Base class of every expected dedupx failure."""

    exit_code = 1


class PermissionDenied(DedupxError, PermissionError):
    """A kernel interface needs root (or CAP_SYS_ADMIN)."""

    exit_code = 3


class PfnHidden(PermissionDenied):
    """pagemap shows zeroed PFNs: the reader lacks CAP_SYS_ADMIN."""


class ProcessNotFound(DedupxError, ValueError):
    """No process has the given PID."""

    exit_code = 4


class ProcessGone(DedupxError):
    """The target exited (or lost its address space) while it was being scanned."""

    exit_code = 5


class KernelUnsupported(DedupxError):
    """The running kernel lacks an interface dedupx needs (e.g. /proc/kpageflags)."""

    exit_code = 6


class ProcParseError(DedupxError, ValueError):
    """A /proc file did not read as the kernel documents it."""


class DedupxIOError(DedupxError, OSError):
    """Reading or writing a file failed for a reason the other classes do not cover."""


class CorruptImage(DedupxError, ValueError):
    """A memory image is truncated, mis-labelled, overlapping or misaligned."""

    exit_code = 8


class ImageTooLarge(DedupxIOError):
    """A memory image declares more memory than the caller allows reading."""


class CorruptSnapshot(DedupxError, ValueError):
    """A snapshot directory is incomplete, damaged, or not a dedupx snapshot."""

    exit_code = 9


class SnapshotVersionError(CorruptSnapshot):
    """A snapshot written by a newer dedupx, in a format this version cannot read."""


class CorruptAgentFile(DedupxError, ValueError):
    """A dedupx-agent file is truncated, damaged, or of an unknown version."""

    exit_code = 12


class NotAGuest(DedupxError, ValueError):
    """The process is not a QEMU guest."""

    exit_code = 10


class QmpError(DedupxError):
    """A QEMU monitor could not be reached or answered something unexpected."""

    exit_code = 11


class UsageError(DedupxError, ValueError):
    """Arguments that do not make sense together."""

    exit_code = 2


class MissingFrames(UsageError):
    """An analysis was handed a capture that lacks what it needs (e.g. the processes of a
    memory image)."""


class FrameExportError(DedupxError):
    """The core's frames could not be handed to Python (an Arrow conversion failed)."""


class OutputError(DedupxError):
    """Results could not be written (full disk, unwritable directory, ...)."""

    exit_code = 7


__all__ = [
    "CorruptAgentFile",
    "CorruptImage",
    "CorruptSnapshot",
    "DedupxError",
    "DedupxIOError",
    "FrameExportError",
    "KernelUnsupported",
    "MissingFrames",
    "NotAGuest",
    "OutputError",
    "PermissionDenied",
    "PfnHidden",
    "ProcParseError",
    "ProcessGone",
    "ProcessNotFound",
    "QmpError",
    "SnapshotVersionError",
    "UsageError",
]
