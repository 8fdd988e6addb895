"""How long `dedupx report` takes on this host: a whole-host snapshot, then the analyses
(with the density curve), the HTML file and each figure as PNG and SVG, in seconds.

usage: python bench/report_time.py [SNAPSHOT_DIR]   (default: snapshot this host now)
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import dedupx
from dedupx.report.figures import figures, to_png, to_svg
from dedupx.report.html import build_report, render_html


def main() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        t0 = time.perf_counter()
        snap = Path(sys.argv[1]) if len(sys.argv) > 1 else dedupx.snapshot(Path(d) / "snap")
        t1 = time.perf_counter()
        report = build_report(dedupx.open_snapshot(snap))
        t2 = time.perf_counter()
        charts = figures(report)
        page = render_html(report, charts)
        t3 = time.perf_counter()
        for chart in charts.values():
            to_png(chart)
        t4 = time.perf_counter()
        for chart in charts.values():
            to_svg(chart)
        t5 = time.perf_counter()
    if len(sys.argv) == 1:
        print(f"snapshot of this host: {t1 - t0:.2f} s")
    print(f"analyses and density: {t2 - t1:.2f} s")
    print(f"HTML ({len(page) / 2**20:.2f} MiB, {len(charts)} figures): {t3 - t2:.2f} s")
    print(f"PNG, all figures: {t4 - t3:.2f} s; SVG: {t5 - t4:.2f} s")


if __name__ == "__main__":
    main()
