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
from dedupx.qemu.cmdline import QemuConfig, parse_qemu_cmdline, parse_size
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


def test_ram_backends_and_what_ksm_can_do() -> None:
    from dedupx.qemu.ram_backing import cmdline_ksm_barrier

    def cfg(*args: str) -> QemuConfig:
        return parse_qemu_cmdline(["qemu-system-x86_64", "-m", "1G", *args])

    backend = "memory-backend-{},id=m,size=1G{}"
    huge = ["/dev/hugepages"]
    cases = {
        (): None,
        ("-machine", "mem-merge=off"): "mem-merge=off",
        ("-object", backend.format("memfd", "")): "shared backend",  # memfd shares by default
        ("-object", backend.format("memfd", ",share=off")): None,
        ("-object", backend.format("memfd", ",hugetlb=on,share=off")): "hugetlb",
        ("-object", backend.format("file", ",mem-path=/dev/hugepages,share=on")): "hugetlb",
        ("-object", backend.format("file", ",mem-path=/dev/hugepages/vm1")): "hugetlb",
        ("-object", backend.format("file", ",mem-path=/dev/shm/vm1,share=on")): "shared backend",
        ("-mem-path", "/dev/hugepages"): "hugetlb",
        ("-object", backend.format("ram", ",prealloc=on")): None,
    }
    for args, barrier in cases.items():
        c = cfg(*args)
        assert cmdline_ksm_barrier(c, huge) == barrier, args
        assert c.mem_merge == (args != ("-machine", "mem-merge=off")), args  # as asked
    assert cfg("-object", backend.format("ram", ",prealloc=on")).mem_prealloc
    assert cfg("-mem-prealloc").mem_prealloc and not cfg().mem_prealloc
    assert cfg("-mem-path", "/dev/hugepages").mem_path == "/dev/hugepages"


def test_guest_ram_mappings_and_their_backing() -> None:
    from dedupx.qemu.ram_backing import backing_label, describe_ram, with_backing

    gib = 1 << 30
    vmas = pl.DataFrame(
        {
            "pid": [1, 1, 1, 1],
            "vma_id": [0, 1, 2, 3],
            "start": [0x1000_0000, 0x1_0000_0000, 0x2_0000_0000, 0x3_0000_0000],
            "end": [0x1010_0000, 0x1_0000_0000 + gib, 0x2_0000_0000 + gib, 0x3_0000_0000 + gib],
            "perms": ["r-xp", "rwxp", "rw-s", "rw-p"],
            "path": ["/usr/bin/qemu", "", "/dev/hugepages/qemu_back_mem.m.x (deleted)", ""],
            "kind": ["file", "anon", "file", "anon"],
            "vm_flags": ["rd ex", "rd wr ex", "rd wr sh ht", "rd wr mg"],
            "mergeable": [False, False, False, True],
            "kernel_page_size": [4096, 4096, 2 << 20, 4096],
        }
    )
    argv = ["qemu-system-x86_64", "-m", "1G", "-object"]
    hugetlb = parse_qemu_cmdline([*argv, "memory-backend-file,id=m,size=1G,share=on"])
    # The TCG translation cache has the RAM's size too, but is executable: never RAM.
    ram = describe_ram(hugetlb, vmas.filter(pl.col("vma_id") != 3))
    assert ram["backing"] == "hugetlb" and ram["huge_page_size"] == 2 << 20
    assert (ram["mem_merge"], ram["ksm_can_merge"], ram["ksm_barrier"]) == (True, False, "hugetlb")
    assert backing_label(ram) == "hugetlb 2 MiB, shared"
    anon = describe_ram(parse_qemu_cmdline(argv[:3]), vmas.filter(pl.col("vma_id") != 2))
    assert (anon["backing"], anon["ksm_can_merge"], anon["ksm_barrier"]) == ("anon", True, None)
    layout = pl.DataFrame({"gpa": [0, 4096, 8192], "hva": [0x2_0000_0000, 0x3_0000_1000, 5]})
    got = with_backing(layout, vmas)
    assert got["backing"].to_list() == ["hugetlb", "anon", None]
    assert got.columns == ["gpa", "hva", "backing"]


def test_ram_bound_is_the_command_lines() -> None:
    """What a guest can have by QEMU's word: -m, its maxmem, or the backends' sizes."""
    from dedupx.qemu.cmdline import parse_qemu_cmdline, ram_bound

    assert ram_bound(parse_qemu_cmdline(["qemu-system-x86_64", "-m", "512"])) == 512 << 20
    hotplug = ["qemu-system-x86_64", "-m", "1G,slots=4,maxmem=8G"]
    assert ram_bound(parse_qemu_cmdline(hotplug)) == 8 << 30
    backed = [
        "qemu-system-x86_64",
        "-m",
        "256",
        "-object",
        "memory-backend-memfd,id=m0,size=2G",
    ]
    assert ram_bound(parse_qemu_cmdline(backed)) == 2 << 30
