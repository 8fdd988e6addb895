"""Reading QEMU command lines and monitor output (no guest needed)."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from dedupx.exceptions import QmpError
from dedupx.qemu.cmdline import parse_qemu_cmdline, parse_size
from dedupx.qemu.gpa_map import layout_from_qmp, parse_mtree_ram


def test_sizes() -> None:
    assert parse_size("768") == 768 << 20
    assert parse_size("2G") == 2 << 30
    assert parse_size("1.5g") == 3 << 29
    assert parse_size("4096", "B") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_full_command_line() -> None:
    argv = [
        "/usr/bin/qemu-system-x86_64",
        "-name",
        "guest=web1,debug-threads=on",
        "-machine",
        "pc-q35-7.2,accel=kvm,mem-merge=off",
        "-m",
        "size=2G,slots=4,maxmem=8G",
        "-object",
        "memory-backend-memfd,id=mem0,size=2G",
        "-object",
        "memory-backend-file,id=mem1,size=1G,mem-path=/dev/hugepages,share=on",
        "-chardev",
        "socket,id=mon0,path=/run/web1.qmp,server=on,wait=off",
        "-mon",
        "chardev=mon0,mode=control",
        "-qmp",
        "unix:/tmp/q.sock,server,nowait",
        "-drive",
        "file=/var/lib/img/web1.qcow2,if=virtio",
        "-blockdev",
        "driver=file,filename=/var/lib/img/data.raw,node-name=d0",
        "-nographic",
    ]
    c = parse_qemu_cmdline(argv)
    assert c.name == "web1"
    assert c.mem_bytes == 2 << 30
    assert (c.machine, c.accel, c.mem_merge) == ("pc-q35-7.2", "kvm", False)
    assert [(b.id, b.kind, b.size, b.share, b.file_backed) for b in c.backends] == [
        ("mem0", "memfd", 2 << 30, True, True),
        ("mem1", "file", 1 << 30, True, True),
    ]
    assert c.qmp_sockets == [Path("/tmp/q.sock"), Path("/run/web1.qmp")]
    assert c.drives == [Path("/var/lib/img/web1.qcow2"), Path("/var/lib/img/data.raw")]


def test_defaults_and_enable_kvm() -> None:
    c = parse_qemu_cmdline(["qemu-system-x86_64", "-enable-kvm", "-name", "x"])
    assert (c.mem_bytes, c.accel, c.machine, c.mem_merge) == (128 << 20, "kvm", None, True)


MTREE = """FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram
  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
  00000000000c0000-00000000000cafff (prio 0, rom): pc.ram @00000000000c0000
  00000000000cb000-000000000fffffff (prio 0, ram): pc.ram @00000000000cb000
  00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

FlatView #1
 AS "I/O", root: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
"""


def test_mtree_ram_ranges() -> None:
    assert parse_mtree_ram(MTREE) == [
        (0, 0x9FFFF, "pc.ram"),
        (0xC0000, 0xCAFFF, "pc.ram"),
        (0xCB000, 0xFFFFFFF, "pc.ram"),
        (0xFD000000, 0xFDFFFFFF, "vga.vram"),
        (0xFFFC0000, 0xFFFFFFFF, "pc.bios"),
    ]
    with pytest.raises(QmpError):
        parse_mtree_ram("nothing here")


@pytest.fixture
def fake_qmp(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A unix socket that speaks QMP badly, as the test's parameter says."""
    path = tmp_path / "qmp.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    mode = request.param

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            if mode == "not-qmp":
                conn.sendall(b'{"hello": 1}\n')
                return
            conn.sendall(b'{"QMP": {"version": {}}}\n')
            f = conn.makefile("rb")
            f.readline()
            conn.sendall(b'{"return": {}}\n')
            f.readline()
            if mode == "garbage":
                conn.sendall(b"this is not json\n")
            elif mode == "error":
                conn.sendall(
                    json.dumps(
                        {"error": {"class": "GenericError", "desc": "no such command"}}
                    ).encode()
                    + b"\n"
                )
            elif mode == "empty-mtree":
                conn.sendall(b'{"return": "FlatView #0\\n"}\n')

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield path
    srv.close()
    t.join(5)


@pytest.mark.parametrize(
    ("fake_qmp", "words"),
    [
        ("not-qmp", "did not greet"),
        ("garbage", "not JSON"),
        ("error", "no such command"),
        ("empty-mtree", "no RAM"),
    ],
    indirect=["fake_qmp"],
)
def test_bad_qmp_answers(fake_qmp: Path, words: str) -> None:
    with pytest.raises(QmpError, match=words):
        layout_from_qmp(fake_qmp)


def test_missing_qmp_socket(tmp_path: Path) -> None:
    with pytest.raises(QmpError, match="cannot connect"):
        layout_from_qmp(tmp_path / "nope.sock")


def test_ept_dump(tmp_path: Path) -> None:
    from dedupx.exceptions import NotAGuest
    from dedupx.qemu.gpa_map import gpa_map_from_ept

    csv = tmp_path / "ept.csv"
    csv.write_text("gpa,hpa\n0x0,0x7f000\n4096,0x1234000\n")
    m = gpa_map_from_ept(7, csv)
    assert m.select("pid", "gpa", "pfn", "block").rows() == [
        (7, 0, 0x7F, "ept"),
        (7, 4096, 0x1234, "ept"),
    ]
    m.select("gpa", pl.col("pfn") * 4096).rename({"pfn": "hpa"}).write_parquet(
        tmp_path / "ept.parquet"
    )
    assert gpa_map_from_ept(7, tmp_path / "ept.parquet").equals(m)
    csv.write_text("gpa,hpa\n0x10,0x7f000\n")
    with pytest.raises(NotAGuest, match="page-aligned"):
        gpa_map_from_ept(7, csv)
    csv.write_text("gpa,host\n0,0\n")
    with pytest.raises(NotAGuest, match="hpa"):
        gpa_map_from_ept(7, csv)
