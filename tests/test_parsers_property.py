"""Property tests: the parsers of text dedupx does not write (a QEMU command line, QEMU's
`info mtree -f` and RAM block table, a guest's /proc/meminfo, a snapshot's manifest)
either return or raise a DedupxError, whatever the text. Kept short (200 examples each) so
that CI stays fast; `make fuzz` runs the same parsers under atheris for longer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from dedupx.exceptions import DedupxError
from dedupx.qemu.cmdline import parse_qemu_cmdline
from dedupx.qemu.gpa_map import parse_mtree_ram
from dedupx.qemu.ramblocks import parse_ramblocks
from dedupx.sources.guest_view import _meminfo_kb
from dedupx.store.snapshot import parse_manifest

EXAMPLES = settings(max_examples=200, deadline=None)
OPTIONS = st.sampled_from(
    ["-name", "-m", "-machine", "-M", "-accel", "-qmp", "-chardev", "-mon", "-object",
     "-drive", "-blockdev", "-hda", "-cdrom", "-enable-kvm", "-S"]
)  # fmt: skip
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["memory-backend-", "memory-backend-ram,", "size=", "unix:", ",,", "="]
    ).flatmap(lambda p: st.text(max_size=20).map(lambda t: p + t)),
    st.from_regex(r"[0-9]{1,400}(\.[0-9]+)?[KMGTBkmgtb]?", fullmatch=True),
)
MTREE = st.lists(
    st.one_of(
        st.text(max_size=60),
        st.sampled_from(["FlatView #0", ' AS "memory", root: system', "FlatView #1"]),
        st.from_regex(
            r"  [0-9a-f]{1,20}-[0-9a-f]{1,20} \(prio -?[0-9], (ram|rom|romd|i/o)\): \S+",
            fullmatch=True,
        ),
    ),
    max_size=12,
).map("\n".join)
RAMBLOCKS = st.lists(
    st.one_of(
        st.text(max_size=60),
        st.from_regex(
            r" *\S{1,30} +[0-9]{1,30} [KMG]iB" + r" +0x[0-9a-f]{1,30}" * 3,
            fullmatch=True,
        ),
    ),
    max_size=12,
).map("\n".join)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["format_version", "files", "rows", "coverage", "pages_of_ram", "pages_in_scope",
     "pages_hashed", "not_covered", "source", "frames", "pages", "kind"]
)  # fmt: skip
MANIFEST = st.recursive(
    JSON, lambda inner: st.dictionaries(KEYS, inner, max_size=6), max_leaves=20
).map(lambda v: json.dumps(v).encode())
MEMINFO = st.lists(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"[A-Za-z()_]{1,12}: +[0-9]{0,30} ?(kB)?", fullmatch=True),
    ),
    max_size=12,
).map("\n".join)


def returns_or_dedupx_error(fn: Callable[..., object], *args: object) -> None:
    with contextlib.suppress(DedupxError):
        fn(*args)


@EXAMPLES
@given(st.lists(st.one_of(OPTIONS, VALUES), max_size=12))
def test_qemu_cmdline_never_crashes(args: list[str]) -> None:
    returns_or_dedupx_error(parse_qemu_cmdline, ["qemu-system-x86_64", *args])


@EXAMPLES
@given(MTREE)
def test_mtree_never_crashes(text: str) -> None:
    returns_or_dedupx_error(parse_mtree_ram, text)


@EXAMPLES
@given(RAMBLOCKS)
def test_ramblocks_never_crash(text: str) -> None:
    returns_or_dedupx_error(parse_ramblocks, text)


@EXAMPLES
@given(MEMINFO)
def test_meminfo_never_crashes(text: str) -> None:
    returns_or_dedupx_error(_meminfo_kb, text)


@EXAMPLES
@given(st.one_of(MANIFEST, st.binary(max_size=200)))
def test_manifest_never_crashes(text: bytes) -> None:
    returns_or_dedupx_error(parse_manifest, text)


def test_manifest_names_no_path_out_of_the_snapshot() -> None:
    for rel in ("../frames.parquet", "/etc/passwd", "a/../../b", ""):
        manifest = {"format_version": 2, "files": {"frames": rel}}
        with contextlib.suppress(DedupxError):
            parse_manifest(json.dumps(manifest).encode())
            raise AssertionError(f"{rel!r} was accepted")
