"""`dedupx report`: one self-contained HTML file with every table and figure of a capture.

The file must open anywhere, offline, years later: the Vega, Vega-Lite and vega-embed
JavaScript (vl-convert's bundle) is inlined once, each figure's Vega-Lite spec sits beside
it as inert JSON, and a Content-Security-Policy forbids the page any network request. Charts
render as SVG so that they stay sharp when printed and their marks are in the DOM.

Every string that comes from the capture (process names, command lines, paths, cgroups,
host names) is hostile input: tables escape it with ``html.escape``; specs are JSON with
``<``, ``>`` and ``&`` written as ``\\u003c`` and so on, so that nothing in them can close
the script element that holds them.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import altair as alt

from dedupx.analysis.density import density, density_summary, instances_of
from dedupx.exceptions import DedupxError, OutputError
from dedupx.model.frames import Frames
from dedupx.model.read_changes import describe
from dedupx.model.units import MIB, pages_to_mib
from dedupx.qemu.ram_backing import backing_label
from dedupx.report.figures import MATRIX_COLUMNS, POLICY_LABELS, figures, to_png, to_svg
from dedupx.report.js_bundle import javascript_bundle
from dedupx.report.snapshot import snapshot_report
from dedupx.report.terminal import backend_notes, coverage_line
from dedupx.sources.guest_view import GuestView

Step = Callable[[str], None]

CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src data:"
)  # Vega compiles its expressions with Function(): hence 'unsafe-eval'.

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0 1.2em; }
th, td { padding: 0.2em 0.7em; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
caption { text-align: left; white-space: nowrap; font-weight: 600; padding-bottom: 0.3em; }
tr.total td { font-weight: 600; }
.chart { margin: 1em 0 2em; } .note { color: #555; } code { font-size: 0.95em; }
"""

RENDER = """
for (const el of document.querySelectorAll("div.chart")) {
  const spec = JSON.parse(document.getElementById(el.dataset.spec).textContent);
  vegaEmbed(el, spec, {renderer: "svg", actions: false})
    .catch((e) => { el.textContent = "This figure could not be drawn: " + e; });
}
"""


def build_report(
    frames: Frames,
    top: int = 10,
    guests: dict[int, GuestView] | None = None,
    step: Step | None = None,
) -> dict[str, Any]:
    """What `dedupx analyze --json` says, plus the density curve of each kind of instance
    the capture holds (VMs, containers): everything the HTML file and its figures show."""
    say = step or (lambda _: None)
    say("analysing the capture")
    report = snapshot_report(frames, top=top, guests=guests)
    report["density"] = {}
    if frames.processes is None or frames.pages is None:
        return report
    for kind in ("vm", "container"):
        if not instances_of(frames, kind):
            continue
        say(f"predicting {kind} density")
        try:
            curve = density(frames, kind=kind)
            report["density"][kind] = {
                "curve": curve.to_dicts(),
                "summary": density_summary(frames, curve, kind=kind),
            }
        except DedupxError as e:
            report["density"][kind] = {"error": str(e)}
    return report


def esc(value: Any) -> str:
    return html.escape(str(value) if value is not None else "", quote=True)


def mib(n_bytes: float | None) -> str:
    return "n/a" if n_bytes is None else f"{n_bytes / MIB:,.1f}"


def pmib(pages: int | None) -> str:
    return "n/a" if pages is None else f"{pages_to_mib(pages):,.1f}"


def table(
    caption: str,
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    cls: str = "",
    total_first_cell: str | None = None,
) -> str:
    """An HTML table; every cell escaped. A row whose first cell is ``total_first_cell`` is
    set in bold."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        attr = (
            ' class="total"' if total_first_cell is not None and row[0] == total_first_cell else ""
        )
        cells = "".join(
            f'<td class="text">{esc(c)}</td>'
            if i and isinstance(c, str) and not isinstance(c, Num)
            else f"<td>{esc(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr{attr}>{cells}</tr>")
    return (
        f'<table class="{esc(cls)}"><caption>{esc(caption)}</caption>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def num_cells(values: Iterable[str]) -> list[Any]:
    """Numbers already formatted, kept right-aligned (``table`` left-aligns other strings)."""
    return [Num(v) for v in values]


class Num(str):
    """A formatted number: a string that ``table`` aligns as a number."""


def script_json(spec: dict[str, Any]) -> str:
    """JSON that is safe inside a <script> element: no '<', '>' or '&' survive literally."""
    text = json.dumps(spec, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def footprint_section(r: dict[str, Any]) -> str:
    if "groups" not in r:
        return "<p class='note'>This capture has no processes: no footprint.</p>"
    groups = table(
        "Footprint by group (MiB)",
        ("group", "processes", "RSS", "PSS", "USS", "swap"),
        (
            [
                g["group"],
                *num_cells(
                    [
                        f"{g['processes']:,}",
                        mib(g["rss_bytes"]),
                        mib(g["pss_bytes"]),
                        mib(g["uss_bytes"]),
                        mib(g["swap_bytes"]),
                    ]
                ),
            ]
            for g in r["groups"]
        ),
        cls="groups",
    )
    procs = table(
        f"Largest processes by PSS (MiB), {len(r['processes'])} of {r['process_count']:,}",
        ("pid", "comm", "kind", "RSS", "PSS", "USS", "swap", "changed while read"),
        (
            [
                Num(str(p["pid"])),
                p["comm"] or "",
                p["kind"] or "",
                *num_cells(
                    mib(p[k]) for k in ("rss_bytes", "pss_bytes", "uss_bytes", "swap_bytes")
                ),
                describe(p) if p.get("changed") else "",
            ]
            for p in r["processes"]
        ),
        cls="processes",
    )
    total = f"<p>PSS of every process: {mib(r['total_pss_bytes'])} MiB.</p>"
    changed = r.get("changed_while_read") or []
    if changed:
        total += (
            f"<p class='note'>{len(changed):,} processes changed while read (at least the "
            "pages and mappings shown): their figures mix two moments.</p>"
        )
    return f"<h2 id='footprint'>Footprint</h2>{groups}{procs}{total}"


def duplicates_section(r: dict[str, Any]) -> str:
    d = r["duplicates"]
    kinds = (*MATRIX_COLUMNS.items(), ("total", "total"), ("zero_content", "of which zeros"))
    savings = table(
        "Duplicate contents host-wide: what perfect merging would save",
        ("kind", "pages", "MiB"),
        (
            [label, *num_cells(["n/a" if d[k] is None else f"{d[k]:,}", pmib(d[k])])]
            for k, label in kinds
        ),
        cls="duplicates",
        total_first_cell="total",
    )
    ksm = table(
        "KSM: what it can reach and what it misses",
        ("", "pages", "MiB"),
        (
            [label, *num_cells(["n/a" if d[k] is None else f"{d[k]:,}", pmib(d[k])])]
            for k, label in (
                ("ksm_reachable", "reachable (anon in MADV_MERGEABLE regions)"),
                ("ksm_reachable_thp", "of which held in THPs (split first)"),
                ("ksm_missed_file", "missed: file-backed"),
                ("ksm_missed_not_mergeable", "missed: not mergeable"),
            )
        ),
        cls="ksm",
    )
    tops = table(
        "Top duplicated contents",
        ("content (hash)", "copies", "anon", "file", "saves (pages)", "where"),
        (
            [
                g["hash"][:16] + (" (zeros)" if g["zero"] else ""),
                *num_cells([f"{g['frames']:,}", str(g["anon"]), str(g["file"]), f"{g['total']:,}"]),
                ", ".join(g["paths"][:5]) + (" …" if len(g["paths"]) > 5 else ""),
            ]
            for g in r["top_duplicates"]
        ),
        cls="top",
    )
    return f"<h2 id='duplicates'>Duplicates and KSM</h2>{savings}{ksm}{tops}"


def matrix_tables(matrix: list[dict[str, Any]], target: str, name: str) -> str:
    """The dedup matrix in MiB (the study's Table 6.4), then KSM's reach of each row."""
    peers = {"vm": "with other VMs", "container": "with other containers"}
    labels = {"within": f"within the {target}", "host": "with the host", **peers}
    kinds = table(
        f"{name}: duplicated memory (MiB)",
        ("", *MATRIX_COLUMNS.values(), "total", "zeros"),
        (
            [
                labels.get(row["row"], row["row"]),
                *num_cells(pmib(row[k]) for k in (*MATRIX_COLUMNS, "total", "zero")),
            ]
            for row in matrix
        ),
        cls="matrix",
        total_first_cell="total",
    )
    ksm = table(
        f"{name}: of which KSM (MiB)",
        ("", "reaches", "in THPs", "misses: file", "misses: not mergeable"),
        (
            [
                labels.get(row["row"], row["row"]),
                *num_cells(
                    pmib(row[k])
                    for k in (
                        "ksm_reachable",
                        "ksm_reachable_thp",
                        "missed_file",
                        "missed_not_mergeable",
                    )
                ),
            ]
            for row in matrix
        ),
        cls="matrix-ksm",
        total_first_cell="total",
    )
    return kinds + ksm


def vm_section(vm: dict[str, Any]) -> str:
    name = f"VM {vm['pid']} ({vm['comm'] or ''})"
    out = [f"<h3>{esc(name)}</h3>"]
    if vm.get("ram"):
        out.append(f"<p>Guest RAM: {esc(backing_label(vm['ram']))}</p>")
    out += [matrix_tables(vm["dedup_matrix"], "VM", name)]
    out += [f"<p>{esc(line)}</p>" for line in backend_notes(vm["dedup_matrix"], vm.get("ram"))]
    uss, cost = vm.get("uss"), vm.get("incremental_cost")
    if uss and cost:

        def row(label: str, now: int, added: int) -> list[Any]:
            return [label, *num_cells([pmib(now), pmib(added)])]

        rows: list[list[Any]] = [
            row("total", uss["pages"], cost["pages"]),
            row("QEMU's own", uss["qemu_pages"], cost["qemu_pages"]),
        ]
        rows += [
            ["  " + part, *num_cells(["", pmib(n)])]
            for part, n in cost["by_part"].items()
            if part != "guest RAM"
        ]
        rows.append(row("guest RAM", uss["guest_ram_pages"], cost["guest_ram_pages"]))
        for b in sorted(set(uss["guest_ram_by_block"]) | set(cost["guest_ram_by_block"])):
            rows.append(
                row(
                    f"  RAM block {b}",
                    uss["guest_ram_by_block"].get(b, 0),
                    cost["guest_ram_by_block"].get(b, 0),
                )
            )
        told_uss, told = uss.get("guest_ram_by_class", {}), cost.get("guest_ram_by_class", {})
        for c in sorted(set(told_uss) | set(told)):
            rows.append(row(f"  guest says {c}", told_uss.get(c, 0), told.get(c, 0)))
        header = ("", "USS now (MiB)", f"incremental, {cost['policy']} (MiB)")
        out.append(table(f"{name}: what it costs", header, rows, cls="cost"))
        out.append(
            f"<p>{uss['unique_contents']:,} contents of this guest are found nowhere else; "
            f"{uss['guest_not_backed']:,} guest pages have no host page.</p>"
        )
    elif "incremental_cost_error" in vm:
        out.append(f"<p class='note'>Incremental cost: {esc(vm['incremental_cost_error'])}</p>")
    if vm.get("devices"):
        devices = [
            [
                d["block"],
                d["device"],
                *num_cells(
                    [pmib(d["resident_pages"]), f"{d['pss_mib']:,.1f}", pmib(d["uss_pages"])]
                ),
            ]
            for d in vm["devices"]
        ]
        columns = ("RAM block", "device", "resident MiB", "PSS MiB", "freed if removed, MiB")
        out.append(table(f"{name}: device memory", columns, devices, cls="devices"))
    if vm.get("guest_classes"):
        out.append(
            table(
                f"{name}: guest pages by what the guest says",
                ("class", "pages", "MiB"),
                ([c, *num_cells([f"{n:,}", pmib(n)])] for c, n in vm["guest_classes"].items()),
                cls="guest-classes",
            )
        )
    bloat = vm.get("bloat")
    if bloat:
        rows = [["cold inactive-LRU pages", *num_cells([f"{bloat['cold_pages']:,}"])]]
        if bloat.get("bloat_pages") is not None:
            rows.append(["  not duplicated in the guest (bloat)", Num(f"{bloat['bloat_pages']:,}")])
        table_html = table(f"{name}: inactive-LRU bloat", ("", "pages"), rows, cls="bloat")
        warn = f"<p class='note'>{esc(bloat['warning'])}</p>" if bloat.get("warning") else ""
        out.append(table_html + warn)
    return "".join(out)


def density_section(r: dict[str, Any]) -> str:
    out = []
    for kind, d in r.get("density", {}).items():
        noun = "VM" if kind == "vm" else kind
        if "error" in d:
            out.append(f"<p class='note'>Density of {esc(noun)}s: {esc(d['error'])}</p>")
            continue
        s = d["summary"]
        out.append(chart_div(f"density-{kind}"))
        fits = s["fits"]
        out.append(
            table(
                f"Density of {noun}s from {len(s['instances'])} captured: how many fit",
                ("policy", "fit in RAM"),
                (
                    [POLICY_LABELS[p], Num("n/a" if n is None else f"{n:,}")]
                    for p, n in fits.items()
                ),
                cls="density",
            )
        )
        ram = s["ram_for_instances_bytes"]
        out.append(
            f"<p>Measured now: {mib(s['measured_avg_pss_bytes'])} MiB per {esc(noun)}; RAM "
            f"left for {esc(noun)}s: {mib(ram)} MiB; N up to {s['n_max']}.</p>"
        )
    if not out:
        return ""
    return "<h2 id='density'>Density (the study's Figure 6.2)</h2>" + "".join(out)


def warm_bundle_cache() -> None:
    """Builds the inlined JavaScript once (``make setup`` does), so reports need not."""
    javascript_bundle(RENDER)


def chart_div(name: str) -> str:
    return f'<div class="chart" id="chart-{esc(name)}" data-spec="spec-{esc(name)}"></div>'


def render_html(report: dict[str, Any], charts: dict[str, alt.TopLevelMixin]) -> str:
    """The whole report as one HTML document that needs nothing but itself to display."""
    r = report
    title = f"dedupx report: {r.get('hostname') or r.get('path')}"
    meta = (
        f"<p>{esc(r['kind'])} capture <code>{esc(r['path'])}</code> of {esc(r['hostname'])} "
        f"(kernel {esc(r['kernel'])}), {esc(r['created'])}; pages read via "
        f"{esc(r['source'])}.</p>"
    )
    cov = f"<p class='coverage'>{esc(coverage_line(r['coverage']))}</p>" if r["coverage"] else ""
    parts = [meta, cov, footprint_section(r), density_section(r)]
    if r.get("vms"):
        parts.append(
            "<h2 id='vms'>VMs: dedup matrix and incremental cost "
            "(Table 6.4, Figures 6.3 and 6.4)</h2>"
        )
        if "cost" in charts:
            parts.append(chart_div("cost"))
        for vm in r["vms"]:
            parts.append(vm_section(vm))
            parts.append(chart_div(f"matrix-vm-{vm['pid']}"))
    if r.get("containers"):
        parts.append("<h2 id='containers'>Containers</h2>")
        for i, c in enumerate(r["containers"], 1):
            name = f"Container {i}: {c['cgroup']}"
            parts.append(
                f"<h3>{esc(name)}</h3><p>{c['processes']:,} processes "
                f"({esc(', '.join(sorted(set(c['comms']))))}); PSS {mib(c['pss_bytes'])} MiB, "
                f"RSS {mib(c['rss_bytes'])} MiB, USS {mib(c['uss_bytes'])} MiB.</p>"
            )
            parts.append(matrix_tables(c["dedup_matrix"], "container", name))
            parts.append(chart_div(f"matrix-container-{i}"))
    parts.append(duplicates_section(r))
    if "top-duplicates" in charts:
        parts.append(chart_div("top-duplicates"))
    specs = "".join(
        f'<script type="application/json" id="spec-{esc(n)}">{script_json(c.to_dict())}</script>'
        for n, c in charts.items()
    )
    # The bundle ends with RENDER, which calls vega-embed for every chart <div> above it.
    bundle = javascript_bundle(RENDER).replace("</script", "<\\/script")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>{''.join(parts)}{specs}"
        f"<script>{bundle}</script></body></html>\n"
    )


def write_report(
    report: dict[str, Any],
    html_path: str | Path | None,
    png_dir: str | Path | None = None,
    svg_dir: str | Path | None = None,
    step: Step | None = None,
) -> list[Path]:
    """Writes the HTML file and, for --png/--svg, one file per figure; returns the paths."""
    say = step or (lambda _: None)
    charts = figures(report)
    written: list[Path] = []
    try:
        if html_path is not None:
            say("writing the HTML report")
            out = Path(html_path)
            out.write_text(render_html(report, charts), encoding="utf-8")
            written.append(out)
        for folder, ext, render in ((png_dir, "png", to_png), (svg_dir, "svg", to_svg)):
            if folder is None:
                continue
            d = Path(folder)
            d.mkdir(parents=True, exist_ok=True)
            for name, chart in charts.items():
                say(f"rendering {name}.{ext}")
                path = d / f"{name}.{ext}"
                data = render(chart)
                if isinstance(data, bytes):
                    path.write_bytes(data)
                else:
                    path.write_text(data, encoding="utf-8")
                written.append(path)
    except OSError as e:
        raise OutputError(f"cannot write the report: {e}") from e
    return written


__all__ = ["build_report", "render_html", "write_report"]
