"""Fixtures: a compiled C process whose pages hold content the test chose."""

from __future__ import annotations

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


@pytest.fixture
def layout(page_layout_bin: Path, tmp_path: Path) -> Iterator[LayoutProcess]:
    """A process holding the standard test layout (see test_scan_duplicates.py)."""
    lp = start_layout(page_layout_bin, tmp_path / "layout", fixture_spec(), zeroread=3)
    try:
        yield lp
    finally:
        stop(lp.proc)
