"""The terminal reports fit an 80-column terminal, with no cell cut short."""

from __future__ import annotations

from rich.console import Console

import dedupx
from dedupx.model.units import pages_to_mib
from dedupx.report.terminal import matrix_tables
from helpers import LayoutProcess


def test_matrix_in_mib_fits_80_columns(layout: LayoutProcess) -> None:
    matrix = dedupx.dedup_matrix(dedupx.scan(layout.pid), layout.pid).to_dicts()
    assert [r["row"] for r in matrix] == ["within", "host", "vm", "total"]
    console = Console(width=80, record=True, color_system=None)
    for t in matrix_tables("VM 1234567 (qemu-system-x86_64)", matrix):
        console.print(t)
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    # The within row's total, in MiB, as the analysis counted it in pages.
    within = next(line for line in text.splitlines() if "within the VM" in line)
    assert f"{pages_to_mib(matrix[0]['total']):,.1f}" in within
