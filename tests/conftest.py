"""Shared fixtures: a compiled C process whose pages hold content the test chose."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PAGE = 4096
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def page_layout_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bin") / "page_layout"
    subprocess.run(
        ["gcc", "-O1", "-Wall", "-Werror", "-o", str(out), str(FIXTURES / "page_layout.c")],
        check=True,
    )
    return out


def random_page(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE)


def fill_page(byte: int) -> bytes:
    return bytes([byte]) * PAGE


@dataclass
class LayoutProcess:
    proc: subprocess.Popen[str]
    regions: dict[str, tuple[int, int]]  # name -> (start address, pages)
    spec: dict[str, list[bytes]]  # name -> page contents as laid out

    @property
    def pid(self) -> int:
        return self.proc.pid

    def page_contents(self) -> dict[int, tuple[str, bytes]]:
        """vaddr -> (region, content) for every page the test laid out."""
        out: dict[int, tuple[str, bytes]] = {}
        for name, pages in self.spec.items():
            start, n = self.regions[name]
            assert n == len(pages)
            for i, content in enumerate(pages):
                out[start + i * PAGE] = (name, content)
        return out


def start_layout(
    binary: Path, workdir: Path, spec: dict[str, list[bytes]], zeroread: int = 0
) -> LayoutProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    for name, pages in spec.items():
        (workdir / name).write_bytes(b"".join(pages))
    if zeroread:
        (workdir / "zeroread.n").write_text(str(zeroread))
    proc = subprocess.Popen([str(binary), str(workdir)], stdout=subprocess.PIPE, text=True)
    regions: dict[str, tuple[int, int]] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "READY":
            break
        _, name, start, pages = line.split()
        regions[name] = (int(start, 16), int(pages))
    else:
        proc.wait(5)
        raise RuntimeError(f"page_layout exited with {proc.returncode}")
    return LayoutProcess(proc, regions, spec)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    if proc.stdout:
        proc.stdout.close()


def fixture_spec() -> dict[str, list[bytes]]:
    """The standard layout: unique, copied, all-equal, zero-filled, file and shmem pages."""
    rng = random.Random(20261126)
    u = [random_page(rng) for _ in range(5)]
    x, y, f, w = (random_page(rng) for _ in range(4))
    z, s, m = fill_page(0), fill_page(0xAB), fill_page(0x5C)
    return {
        "anon.bin": [u[0], u[1], x, x, x, z, z, s, s, s, s, y],
        "mergeable.bin": [x, m, m, u[2], z],
        "file.bin": [y, f, f, u[3], x],
        "shm.bin": [w, w, s, u[4]],
    }


@pytest.fixture
def layout(page_layout_bin: Path, tmp_path: Path) -> Iterator[LayoutProcess]:
    """A process holding the standard test layout (see test_scan_duplicates.py)."""
    lp = start_layout(page_layout_bin, tmp_path / "layout", fixture_spec(), zeroread=3)
    try:
        yield lp
    finally:
        stop(lp.proc)


def as_root() -> bool:
    return os.geteuid() == 0
