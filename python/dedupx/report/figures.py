"""The report's figures as altair charts, drawn from the report dict only.

Every number plotted here was computed by an analysis (``report/snapshot.py``'s dict, the
density curve); this module only reshapes them and converts pages to MiB, so that a figure
can never disagree with the table beside it. The figures follow the study's: density
curves (its Figure 6.2), incremental cost as stacked bars (6.3, 6.4), the dedup matrix
(Table 6.4) as a heatmap, and the most duplicated contents.
"""

from __future__ import annotations

from typing import Any

import altair as alt
import vl_convert

from dedupx.model.units import pages_to_mib

POLICY_LABELS = {"none": "no merging", "ksm": "KSM", "perfect": "perfect merging"}
MATRIX_COLUMNS = {"anon_anon": "anon/anon", "file_file": "file/file", "anon_file": "anon/file"}
MATRIX_ROWS = {"within": "within", "host": "with the host", "vm": "with other VMs"}
CONTAINER_ROWS = {"within": "within", "host": "with the host", "container": "with containers"}
WIDTH = 560
TOP_BARS = 20  # the top list's table holds them all; a chart of hundreds of bars reads as none


def density_chart(curve: list[dict[str, Any]], kind: str) -> alt.Chart:
    """Average PSS per instance against N, one line per merging policy: Figure 6.2's shape
    (N on a log scale, so that 1, 2, 4 ... 64 are evenly spaced as the study's runs were)."""
    values = [
        {
            "n": p["n"],
            "policy": POLICY_LABELS.get(p["policy"], p["policy"]),
            "mib": p["avg_pss_mib"],
        }
        for p in curve
    ]
    noun = "VM" if kind == "vm" else kind
    return (
        alt.Chart(alt.Data(values=values), title=f"Average PSS per {noun} as instances are added")
        .mark_line(point=True)
        .encode(
            x=alt.X("n:Q", title=f"{noun}s (N)", scale=alt.Scale(type="log", base=2)),
            y=alt.Y("mib:Q", title=f"average PSS per {noun} (MiB)"),
            color=alt.Color("policy:N", sort=list(POLICY_LABELS.values()), title="policy"),
            tooltip=["n:Q", "policy:N", alt.Tooltip("mib:Q", format=",.1f")],
        )
        .properties(width=WIDTH, height=300)
    )


def cost_rows(vm: dict[str, Any]) -> list[dict[str, Any]]:
    """One VM's incremental cost as (bar, part, MiB) rows: QEMU's own memory beside guest
    RAM by RAM block (Figure 6.3), and, when the guest said what its pages are, a second bar
    with guest RAM by guest class (Figure 6.4)."""
    cost = vm.get("incremental_cost")
    if not cost:
        return []
    label = f"VM {vm['pid']}"
    qemu_parts = [
        {"part": part, "mib": pages_to_mib(n)}
        for part, n in cost["by_part"].items()
        if part != "guest RAM"
    ]
    rows = [{"bar": f"{label} by RAM block", **q} for q in qemu_parts]
    rows += [
        {"bar": f"{label} by RAM block", "part": f"RAM block {block}", "mib": pages_to_mib(n)}
        for block, n in cost["guest_ram_by_block"].items()
    ]
    if "guest_ram_by_class" in cost:
        rows += [{"bar": f"{label} by guest class", **q} for q in qemu_parts]
        rows += [
            {"bar": f"{label} by guest class", "part": f"guest {cls}", "mib": pages_to_mib(n)}
            for cls, n in cost["guest_ram_by_class"].items()
        ]
    return rows


def cost_chart(vms: list[dict[str, Any]]) -> alt.Chart | None:
    """Incremental cost per VM as stacked bars (the study's Figures 6.3 and 6.4)."""
    values = [r for vm in vms for r in cost_rows(vm)]
    if not values:
        return None
    return (
        alt.Chart(alt.Data(values=values), title="Incremental cost: what one more guest costs")
        .mark_bar()
        .encode(
            y=alt.Y("bar:N", title=None, sort=None),
            x=alt.X("sum(mib):Q", title="MiB one more guest adds (KSM as configured)"),
            color=alt.Color("part:N", title="part"),
            order=alt.Order("part:N"),
            tooltip=["bar:N", "part:N", alt.Tooltip("mib:Q", format=",.1f")],
        )
        .properties(width=WIDTH)
    )


def matrix_chart(matrix: list[dict[str, Any]], title: str, target: str = "vm") -> alt.LayerChart:
    """The dedup matrix as a heatmap: rows within / host / peers, columns by kind, MiB in
    each cell (the study's Table 6.4). The total row is left out: it is the column sum."""
    rows = MATRIX_ROWS if target == "vm" else CONTAINER_ROWS
    values: list[dict[str, Any]] = [
        {"row": rows[r["row"]], "column": label, "mib": pages_to_mib(r[key])}
        for r in matrix
        if r["row"] in rows
        for key, label in MATRIX_COLUMNS.items()
    ]
    base = alt.Chart(alt.Data(values=values), title=title).encode(
        x=alt.X(
            "column:N",
            title=None,
            sort=list(MATRIX_COLUMNS.values()),
            axis=alt.Axis(labelAngle=0, orient="top"),
        ),
        y=alt.Y("row:N", title=None, sort=list(rows.values())),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("mib:Q", title="MiB", scale=alt.Scale(scheme="blues")),
        tooltip=["row:N", "column:N", alt.Tooltip("mib:Q", format=",.1f")],
    )
    dark = max((v["mib"] for v in values), default=0.0) / 2
    text = base.mark_text(baseline="middle").encode(
        text=alt.Text("mib:Q", format=",.1f"),
        color=alt.condition(f"datum.mib > {dark}", alt.value("white"), alt.value("black")),
    )
    return alt.LayerChart(layer=[cells, text]).properties(width=300, height=150)


def top_chart(tops: list[dict[str, Any]]) -> alt.Chart | None:
    """The most duplicated contents (the first ``TOP_BARS``): MiB perfect merging would save
    by merging each, labelled by hash and where the copies live."""
    if not tops:
        return None
    values = [
        {
            "content": g["hash"][:12] + (" (zeros)" if g["zero"] else ""),
            "where": ", ".join(g["paths"][:3]) + (" …" if len(g["paths"]) > 3 else ""),
            "copies": g["frames"],
            "mib": pages_to_mib(g["total"]),
        }
        for g in tops[:TOP_BARS]
    ]
    return (
        alt.Chart(alt.Data(values=values), title="Top duplicated contents")
        .mark_bar()
        .encode(
            y=alt.Y("content:N", title="content (hash)", sort="-x"),
            x=alt.X("mib:Q", title="MiB merging its copies would save"),
            tooltip=["content:N", "copies:Q", "where:N", alt.Tooltip("mib:Q", format=",.2f")],
        )
        .properties(width=WIDTH)
    )


def figures(report: dict[str, Any]) -> dict[str, alt.TopLevelMixin]:
    """Every figure the report holds, by a file-name-safe name, in the order shown."""
    out: dict[str, alt.TopLevelMixin] = {}
    for kind, d in report.get("density", {}).items():
        if "curve" in d:
            out[f"density-{kind}"] = density_chart(d["curve"], kind)
    cost = cost_chart(report.get("vms", []))
    if cost is not None:
        out["cost"] = cost
    for vm in report.get("vms", []):
        out[f"matrix-vm-{vm['pid']}"] = matrix_chart(vm["dedup_matrix"], f"VM {vm['pid']}")
    for i, c in enumerate(report.get("containers", []), 1):
        out[f"matrix-container-{i}"] = matrix_chart(
            c["dedup_matrix"], f"Container {i}", target="container"
        )
    top = top_chart(report.get("top_duplicates", []))
    if top is not None:
        out["top-duplicates"] = top
    return out


def to_svg(chart: alt.TopLevelMixin) -> str:
    return str(vl_convert.vegalite_to_svg(chart.to_dict()))


def to_png(chart: alt.TopLevelMixin, scale: float = 2.0) -> bytes:
    return bytes(vl_convert.vegalite_to_png(chart.to_dict(), scale=scale))


__all__ = [
    "cost_chart",
    "density_chart",
    "figures",
    "matrix_chart",
    "to_png",
    "to_svg",
    "top_chart",
]
