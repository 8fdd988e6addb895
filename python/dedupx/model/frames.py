"""The one input model of every analysis: a capture's frames, lazily, with where they came from.

A live process scan, a host snapshot, an opened snapshot directory and a memory image all
become a :class:`Frames`; every analysis takes one (through :func:`as_frames`, which also
accepts anything with a ``to_frames()`` method, such as a ``ProcessScan`` or a
``MemoryImage``). The analyses never ask which source filled a frame: what a capture lacks
(an image has no processes) is ``None``, and an analysis that needs it says so with
``MissingFrames``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import polars as pl

from dedupx.exceptions import MissingFrames
from dedupx.model.content_key import keyed
from dedupx.model.page_classes import holds_frame

FrameLike = pl.DataFrame | pl.LazyFrame


@dataclass(frozen=True)
class Provenance:
    """Where frames came from: ``kind`` (``process-scan``, ``host``, ``image``), the
    ``source`` that read page contents, the ``coverage`` (see dedupx.model.coverage), the
    snapshot directory or image ``path`` if any, and the snapshot's ``manifest``."""

    kind: str
    source: str
    coverage: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Frames:
    """A capture as lazy polars frames (column contract in docs/frames.md).

    ``frames``: one row per distinct physical page in scope (``pfn``, ``hash``, ``zero``,
    and ``kpageflags``/``mapcount`` where the source has flags); ``pages``: one row per
    mapped virtual page; ``vmas``; ``processes`` (``pid``, ``comm``, ``cmdline`` as a list,
    ``kind``, ...); ``gpa_map`` (guest-physical to host pages of QEMU processes, by
    ``pid``). Any but ``frames`` may be ``None`` where the capture has no such thing.
    ``hashed``: the content view (dedupx.analysis.hashed_frames), once computed for a run
    of analyses of the capture to share (``with_hashed``), else ``None``.
    """

    frames: pl.LazyFrame
    provenance: Provenance
    pages: pl.LazyFrame | None = None
    vmas: pl.LazyFrame | None = None
    processes: pl.LazyFrame | None = None
    gpa_map: pl.LazyFrame | None = None
    hashed: pl.LazyFrame | None = None
    is_keyed: bool = False

    def keyed(self) -> Frames:
        """The same capture with its hashes as content keys (dedupx.model.content_key), as
        the analyses take it; done once, the result says so."""
        if self.is_keyed:
            return self
        return dataclasses.replace(
            self,
            frames=keyed(self.frames),
            pages=None if self.pages is None else keyed(self.pages),
            hashed=None if self.hashed is None else keyed(self.hashed),
            is_keyed=True,
        )

    def with_hashed(self, hashed: pl.DataFrame) -> Frames:
        """The same capture with its content view computed: the analyses that read it
        read this one instead of computing it again."""
        view = hashed.lazy()
        return dataclasses.replace(self, hashed=keyed(view) if self.is_keyed else view)

    def has_flags(self) -> bool:
        """Whether frames carry kpageflags (a memory image's do not: anon and file cannot
        be told apart there). A method: on a snapshot it reads the Parquet schema."""
        return "kpageflags" in self.frames.collect_schema().names()

    def with_gpa_map(self, gpa_map: FrameLike | None) -> Frames:
        """The same capture with a guest's gpa map (rows of other PIDs are kept)."""
        if gpa_map is None:
            return self
        new = gpa_map.lazy()
        merged = new if self.gpa_map is None else pl.concat([self.gpa_map, new], how="diagonal")
        return dataclasses.replace(self, gpa_map=merged, hashed=None)

    def narrowed_to(self, pfns: pl.LazyFrame) -> Frames:
        """The capture narrowed to the frames ``pfns`` (a ``pfn`` column) names, the pages
        that map them and, where computed, their content view."""

        def kept(lf: pl.LazyFrame) -> pl.LazyFrame:
            return lf.join(pfns, on="pfn", how="semi")

        return dataclasses.replace(
            self,
            frames=kept(self.frames),
            pages=None if self.pages is None else kept(self.pages),
            hashed=None if self.hashed is None else kept(self.hashed),
        )

    def restrict(self, pages: pl.Expr) -> Frames:
        """The capture narrowed to the pages matching ``pages`` (an expression over the
        pages frame: one mapping, one address range) and the frames those pages map."""
        self.require("restrict", "pages")
        assert self.pages is not None
        kept = self.pages.filter(pages)
        pfns = kept.filter(holds_frame()).select("pfn").unique()
        return dataclasses.replace(
            self, pages=kept, frames=self.frames.join(pfns, on="pfn", how="semi"), hashed=None
        )

    def require(self, analysis: str, *names: str) -> None:
        """Raises ``MissingFrames`` unless the capture has each frame in ``names``."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise MissingFrames(
                f"{analysis} needs the {' and '.join(missing)} of a process scan or host "
                f"snapshot; this {self.provenance.kind} capture has none"
            )

    def __repr__(self) -> str:
        have = [
            n for n in ("pages", "vmas", "processes", "gpa_map") if getattr(self, n) is not None
        ]
        where = f", path={str(self.provenance.path)!r}" if self.provenance.path else ""
        return f"Frames(kind={self.provenance.kind!r}{where}, frames+{'+'.join(have) or 'nothing'})"


@runtime_checkable
class HasFrames(Protocol):
    """Anything that can give its capture as Frames (a ProcessScan, a MemoryImage)."""

    def to_frames(self) -> Frames: ...


def as_frames(data: Frames | HasFrames) -> Frames:
    """The Frames of what a caller hands an analysis (Frames, or the result of
    ``to_frames()``), with its hashes as content keys. Paths are opened with
    ``dedupx.load``."""
    if isinstance(data, Frames):
        return data.keyed()
    if isinstance(data, HasFrames):
        return data.to_frames().keyed()
    raise TypeError(
        f"expected Frames, a scan or a memory image, got {type(data).__name__} "
        "(open a snapshot directory or image file with dedupx.load)"
    )


__all__ = ["FrameLike", "Frames", "HasFrames", "Provenance", "as_frames"]
