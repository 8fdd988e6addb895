"""Swapped pages at scale: a 256 MiB anonymous region of a fixture (pages the benchmark
wrote: 8,192 contents, each about 8 times), half paged out to a swap file the benchmark
makes and removes. Prints the duplicates with all present and with half swapped out (equal
when every swap slot is read back), the kernel's VmSwap before and after the scan
(unchanged: nothing swapped in), and the scan's time with and without swap reads.

usage: python bench/swap_scan.py [--mib 256]   (as root; the host must not swap already)
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dedupx
from helpers import FIXTURES, PAGE, fill_page, random_page, start_layout, stop
from test_swap import page_out, vm_swap_kb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=256)
    a = ap.parse_args()
    if Path("/proc/swaps").read_text().count("\n") > 1:
        sys.exit("the host already swaps: this benchmark makes its own swap file")
    pages_n = a.mib << 8
    with tempfile.TemporaryDirectory(prefix="dedupx-swap-") as tmp:
        work = Path(tmp)
        binary = work / "page_layout"
        subprocess.run(
            ["cc", "-O2", "-o", str(binary), str(FIXTURES / "page_layout.c")], check=True
        )
        rng = random.Random(1)
        contents = [random_page(rng) for _ in range(pages_n // 8)] + [fill_page(0)]
        pages = [rng.choice(contents) for _ in range(pages_n)]
        swap = work / "swapfile"
        with swap.open("wb") as f:
            for _ in range(a.mib // 2 + 16):
                f.write(bytes(1 << 20))
        swap.chmod(0o600)
        subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
        subprocess.run(["swapon", str(swap)], check=True)
        lp = start_layout(binary, work / "layout", {"anon.bin": pages})
        del pages, contents
        try:
            start, n = lp.regions["anon.bin"]
            t0 = time.perf_counter()
            before = dedupx.duplicates(dedupx.scan(lp.pid)).row(0, named=True)
            t_present = time.perf_counter() - t0
            page_out(lp.pid, start + (n // 2) * PAGE, n - n // 2)
            swapped_kb = vm_swap_kb(lp.pid)
            t0 = time.perf_counter()
            scan = dedupx.scan(lp.pid)
            t_swapped = time.perf_counter() - t0
            after = dedupx.duplicates(scan).row(0, named=True)
            cov = scan.to_frames().provenance.coverage
            print(
                f"region {a.mib} MiB; swapped out {swapped_kb / 1024:,.1f} MiB "
                f"(VmSwap after the scan {vm_swap_kb(lp.pid) / 1024:,.1f} MiB)"
            )
            print(
                f"anon/anon duplicates: all present {before['anon_anon']:,}, half swapped "
                f"{after['anon_anon']:,}; total {before['total']:,} / {after['total']:,}"
            )
            print(
                f"coverage: {cov['pages_hashed']:,} of {cov['pages_in_scope']:,} "
                f"{cov['scope']} ({cov['hashed_share']:.1%}); swap slots "
                f"{scan.stats['swap_slots']:,}, hashed {scan.stats['swap_hashed']:,}"
            )
            print(
                f"scan: {t_present:.2f} s all present, {t_swapped:.2f} s half swapped "
                f"({swapped_kb / 1024 / max(t_swapped, 1e-9):,.0f} MiB/s over the swapped part)"
            )
        finally:
            stop(lp.proc)
            subprocess.run(["swapoff", str(swap)], check=True)


if __name__ == "__main__":
    main()
