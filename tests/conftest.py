"""Fixtures: a compiled C process whose pages hold content the test chose, and the static
dedupx-agent that guests run."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import FIXTURES, LayoutProcess, fixture_spec, start_layout, stop


@pytest.fixture(scope="session")
def page_layout_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bin") / "page_layout"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-Werror", "-o", str(out), str(FIXTURES / "page_layout.c")],
        check=True,
    )
    return out


@pytest.fixture(scope="session")
def agent_binary() -> Path:
    """dedupx-agent, linked statically so that it runs in a bare busybox initramfs: the
    one $DEDUPX_TEST_AGENT names, else built here."""
    if os.environ.get("DEDUPX_TEST_AGENT"):
        return Path(os.environ["DEDUPX_TEST_AGENT"])
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "RUSTFLAGS": "-C target-feature=+crt-static"}
    target = "x86_64-unknown-linux-gnu"
    subprocess.run(
        ["cargo", "build", "--quiet", "--release", "-p", "dedupx-agent", "--target", target],
        cwd=root,
        env=env,
        check=True,
    )
    return root / "target" / target / "release" / "dedupx-agent"


@pytest.fixture
def layout(page_layout_bin: Path, tmp_path: Path) -> Iterator[LayoutProcess]:
    """A process holding the standard test layout (see test_scan_duplicates.py)."""
    lp = start_layout(page_layout_bin, tmp_path / "layout", fixture_spec(), zeroread=3)
    try:
        yield lp
    finally:
        stop(lp.proc)
