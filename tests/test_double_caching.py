"""Double caching: a guest's RAM holds what the host also caches of the guest's disk image.

The "b" guest carries 8 MiB of seeded random data in its RAM (a tmpfs file); its disk image
holds the same bytes, cached on the host. Without /proc/kcore those cached pages are mapped
by no process, yet the snapshot must hash them and the dedup matrix must find every one.
"""

from __future__ import annotations

import random
from pathlib import Path

import blake3
import polars as pl

import dedupx
from dedupx.model.kpageflags import KPF_ANON, KPF_SWAPBACKED
from guest_kit import VARIANT_PAYLOAD_MIB, Guest, ensure_packages, guest_assets
from helpers import keep_warm

PAGE = 4096


def test_guest_disk_cache_duplicates_guest_ram(tmp_path: Path) -> None:
    ensure_packages()
    payload = random.Random("dedupx-guest-b").randbytes(VARIANT_PAYLOAD_MIB["b"] << 20)
    pages = [payload[i : i + PAGE] for i in range(0, len(payload), PAGE)]
    hashes = {blake3.blake3(p).digest()[:16] for p in pages}
    assert len(hashes) == len(pages) == 2048
    disk = tmp_path / "disk.img"
    disk.write_bytes(payload)  # just written: all of it in the host page cache
    drive = ("-drive", f"file={disk},format=raw,if=none,id=d0")
    with (
        keep_warm([disk]),  # cached until the snapshot, whatever reclaim does meanwhile
        Guest(
            guest_assets(variant="b"),
            mem_mib=256,
            name="cached",
            workdir=tmp_path,
            extra_args=drive,
        ) as g,
    ):
        g.stop()
        # The guest's own disk only (its open files are hashed whatever the walk): copies
        # of the same payload left by earlier runs' temporary directories must not count.
        snap = dedupx.open_snapshot(dedupx.snapshot(tmp_path / "snap", page_cache=False))
        (cached,) = [
            f for f in snap.provenance.manifest["scan"]["cached_files"] if f["path"] == str(disk)
        ]
        assert cached == {"path": str(disk), "cached_pages": 2048, "pages": 2048}
        mine = snap.frames.filter(pl.col("hash").is_in(list(hashes))).collect()
        anon = (mine["kpageflags"] & ((1 << KPF_ANON) | (1 << KPF_SWAPBACKED))) != 0
        # One copy in guest RAM (anon to the host), one in the host's page cache.
        assert (anon.sum(), (~anon).sum()) == (2048, 2048)
        host = dedupx.dedup_matrix(snap, g.pid).filter(pl.col("row") == "host").row(0, named=True)
        assert host["anon_file"] >= 2048
        assert host["missed_file"] >= 2048  # KSM cannot merge a page with page cache
