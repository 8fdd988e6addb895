"""A fleet's sharing, for people (an 80-column table in MiB) and for scripts (a dict)."""

from __future__ import annotations

from typing import Any

import polars as pl
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dedupx.model.units import pages_to_mib

CELLS = ("total", "anon_anon", "file_file", "anon_file", "ksm")


def host_savings(m: pl.DataFrame) -> pl.DataFrame:
    """Per host, the contents its instances share pairwise now (same-host pairs): what
    co-location already offers to merging, in pages."""
    same = m.filter(pl.col("same_host"))
    return (
        same.group_by(pl.col("host_a").alias("host"))
        .agg(pl.col(c).sum() for c in CELLS)
        .sort("total", descending=True)
    )


def fleet_report(m: pl.DataFrame, instances: pl.DataFrame, errors: list[str]) -> dict[str, Any]:
    return {
        "instances": instances.to_dicts(),
        "pairs": m.to_dicts(),
        "hosts": host_savings(m).to_dicts(),
        "errors": errors,
    }


def render_fleet(m: pl.DataFrame, instances: pl.DataFrame, top: int, console: Console) -> None:
    hosts = instances["host"].n_unique()
    console.print(
        f"{instances.height:,} instances on {hosts:,} hosts; {m.height:,} pairs share contents."
    )
    t = Table(title=f"Pairs sharing most (MiB), top {top}", title_justify="left")
    t.add_column("instance A ↔ instance B")
    for col in ("same host", "total", "anon", "file", "a/f", "KSM"):
        t.add_column(col, justify="right")
    for r in m.sort("total", descending=True).head(top).iter_rows(named=True):
        err = f" ±{r['rel_error']:.0%}" if r["rel_error"] else ""
        t.add_row(
            escape(f"{r['instance_a']} ↔ {r['instance_b']}"),
            "yes" if r["same_host"] else "no",
            f"{pages_to_mib(r['total']):,.1f}{err}",
            *(f"{pages_to_mib(r[c]):,.1f}" for c in ("anon_anon", "file_file", "anon_file", "ksm")),
        )
    console.print(t)
    h = Table(title="Shared within each host now (MiB)", title_justify="left")
    h.add_column("host")
    for col in ("total", "anon", "file", "a/f", "KSM"):
        h.add_column(col, justify="right")
    for r in host_savings(m).head(top).iter_rows(named=True):
        h.add_row(escape(str(r["host"])), *(f"{pages_to_mib(r[c]):,.1f}" for c in CELLS))
    console.print(h)


def render_placement(plan: dict[str, Any], top: int, console: Console) -> None:
    console.print(
        f"Placement: merging within hosts saves {pages_to_mib(plan['current']):,.1f} MiB "
        f"now, {pages_to_mib(plan['greedy']):,.1f} MiB placed by Memory Buddies' greedy "
        f"heuristic, {pages_to_mib(plan['proposed']):,.1f} MiB as proposed: "
        f"{plan['vms_moved']:,} VMs move, {plan['hosts_freed']:,} hosts freed."
    )
    if plan["moves"]:
        t = Table(title=f"Moves (first {top})", title_justify="left")
        for col in ("VM", "from", "to"):
            t.add_column(col)
        for m in plan["moves"][:top]:
            t.add_row(escape(m["vm"]), escape(m["from"]), escape(m["to"]))
        console.print(t)


__all__ = ["fleet_report", "host_savings", "render_fleet", "render_placement"]
