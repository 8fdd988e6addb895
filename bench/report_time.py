"""How long `dedupx report` takes on a host with two 2 GiB guests: the snapshot, the
analyses (with the density curve), then what the report adds beyond them (the HTML file
with its figures) and each figure as PNG and SVG, in seconds. Target: the report adds
under 3 s to the analyses.

usage: python bench/report_time.py [--mem-mib 2048] [--guests 2] [--snapshot DIR]
  (--guests 0 measures this host as it is; --snapshot reuses a snapshot)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import dedupx
from dedupx.report.figures import figures, to_png, to_svg
from dedupx.report.html import build_report, render_html
from guest_kit import Guest, ensure_packages, guest_assets

TARGET_SECONDS = 3.0


def time_report(snap_dir: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    snap = dedupx.open_snapshot(snap_dir)
    report = build_report(snap)
    t1 = time.perf_counter()
    charts = figures(report)
    page = render_html(report, charts)
    t2 = time.perf_counter()
    for chart in charts.values():
        to_png(chart)
    t3 = time.perf_counter()
    for chart in charts.values():
        to_svg(chart)
    t4 = time.perf_counter()
    vms = len(report.get("vms", []))
    print(f"analyses and density ({vms} guests): {t1 - t0:.2f} s")
    print(f"report beyond the analyses: HTML of {len(page) / 2**20:.2f} MiB with")
    print(f"  {len(charts)} figures in {t2 - t1:.2f} s (target < {TARGET_SECONDS:.0f} s)")
    print(f"PNG, all figures: {t3 - t2:.2f} s; SVG: {t4 - t3:.2f} s")
    return {"analyses": t1 - t0, "html": t2 - t1, "png": t3 - t2, "svg": t4 - t3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mem-mib", type=int, default=2048)
    ap.add_argument("--guests", type=int, default=2)
    ap.add_argument("--snapshot", type=Path)
    args = ap.parse_args()
    if args.snapshot:
        time_report(args.snapshot)
        return
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d, ExitStack() as stack:
        if args.guests:
            ensure_packages()
            assets = guest_assets(variant="fill")  # guests that touch their RAM
            for i in range(args.guests):
                g = Guest(assets, mem_mib=args.mem_mib, name=f"r{i}", workdir=Path(d))
                g.boot_timeout = 600
                stack.enter_context(g).stop()
        t0 = time.perf_counter()
        snap = dedupx.snapshot(Path(d) / "snap")
        print(f"snapshot of this host: {time.perf_counter() - t0:.2f} s")
        time_report(snap)


if __name__ == "__main__":
    main()
