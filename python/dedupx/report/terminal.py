"""The reports in a terminal: rich tables that fit 80 columns where they can."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dedupx.model.read_changes import describe
from dedupx.model.units import MIB, PAGE_SIZE, pages_to_mib
from dedupx.qemu.ram_backing import backing_label


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / MIB:,.1f}"


def _pages(n: int, page_size: int) -> tuple[str, str]:
    return f"{n:,}", _mib(n * page_size)


def savings_table(d: dict[str, Any], more: tuple[tuple[str, str], ...]) -> Table:
    """Pages perfect merging would save, by kind, then the ``more`` rows; n/a where a figure
    cannot be known (anon and file in a memory image)."""
    t = Table(title="Duplicate contents: what perfect merging would save", title_justify="left")
    t.add_column("kind")
    t.add_column("pages", justify="right")
    t.add_column("MiB", justify="right")
    kinds = (("anon_anon", "anon/anon"), ("file_file", "file/file"), ("anon_file", "anon/file"))
    for key, label in (*kinds, ("total", "total"), *more):
        v = d.get(key)
        cells = _pages(v, PAGE_SIZE) if v is not None else ("n/a", "n/a")
        t.add_row(label, *cells, style="bold" if key == "total" else None)
    return t


def top_table(tops: list[dict[str, Any]], by_kind: bool) -> Table:
    """The most duplicated contents: copies, (anon and file copies,) pages saved, where."""
    t = Table(title="Top duplicated contents", title_justify="left")
    t.add_column("hash")
    t.add_column("copies", justify="right")
    if by_kind:
        t.add_column("anon", justify="right")
        t.add_column("file", justify="right")
    t.add_column("saves", justify="right")
    t.add_column("where")
    for g in tops:
        where = escape(", ".join(g["paths"][:3]) + (" …" if len(g["paths"]) > 3 else ""))
        label = g["hash"][:16] + (" (zeros)" if g["zero"] else "")
        kinds = [str(g["anon"]), str(g["file"])] if by_kind else []
        t.add_row(label, str(g["frames"]), *kinds, f"{g['total']:,}", where)
    return t


def render_process_report(r: dict[str, Any], console: Console) -> None:
    ps = r["page_size"]
    cmd = " ".join(r["cmdline"])[:100] or r["comm"]
    console.print(f"[bold]PID {r['pid']}[/bold] ({escape(r['comm'])}): {escape(cmd)}")
    changes = r.get("changed_while_read") or {}
    if changes.get("changed"):
        console.print(
            f"[yellow]Changed while read: {describe(changes)}; these figures mix the "
            "process before and after.[/yellow]"
        )

    fp = r["footprint"]
    t = Table(title="Footprint (MiB)", title_justify="left")
    t.add_column("class")
    for col in ("RSS", "PSS", "USS"):
        t.add_column(col, justify="right")
    t.add_row("all", _mib(r["rss_bytes"]), _mib(r["pss_bytes"]), _mib(r["uss_bytes"]), style="bold")
    for cls in ("anon", "file", "shmem"):
        t.add_row(cls, *(_mib(fp.get(f"{cls}_{m}_bytes", 0)) for m in ("rss", "pss", "uss")))
    t.add_row("swap", _mib(r["swap_bytes"]), "", "")
    huge = fp.get("shared_hugetlb_bytes", 0) + fp.get("private_hugetlb_bytes", 0)
    if huge:
        # smaps leaves hugetlb out of Rss and Pss: shown apart, as smaps_rollup does.
        t.add_row("hugetlb, shared", _mib(fp["shared_hugetlb_bytes"]), "", "")
        t.add_row("hugetlb, private", _mib(fp["private_hugetlb_bytes"]), "", "")
    console.print(t)

    t = Table(title="Mapped pages by class", title_justify="left")
    t.add_column("class")
    t.add_column("pages", justify="right")
    t.add_column("MiB", justify="right")
    labels = {
        "anon": "private anon",
        "file": "file (page cache)",
        "shmem": "shmem / tmpfs",
        "zero_page": "kernel zero page",
        "zero_content": "zero-filled (not the zero page)",
        "ksm": "KSM-merged",
        "thp": "in transparent huge pages",
        "hugetlb": "hugetlb (not in RSS/PSS)",
        "swapped": "swapped out",
    }
    for key, label in labels.items():
        t.add_row(label, *_pages(r["page_classes"][key], ps))
    console.print(t)

    d = r["duplicates"]
    more = [("zero_content", "  of which zero-filled")]
    if d.get("hugetlb"):  # freed only whole: what is reachable without splitting one
        more += [
            ("hugetlb", "  of which in hugetlb pages"),
            ("hugetlb_whole", "    in huge pages freed whole"),
        ]
    console.print(savings_table(d, tuple(more)))

    t = Table(title="KSM", title_justify="left")
    t.add_column("")
    t.add_column("pages", justify="right")
    t.add_column("MiB", justify="right")
    t.add_row("reachable (anon in MADV_MERGEABLE)", *_pages(d["ksm_reachable"], ps))
    t.add_row("  held in THPs (KSM splits them first)", *_pages(d["ksm_reachable_thp"], ps))
    t.add_row("missed: file-backed", *_pages(d["ksm_missed_file"], ps))
    t.add_row("missed: not mergeable", *_pages(d["ksm_missed_not_mergeable"], ps))
    for key, why in (("hugetlb", "hugetlb"), ("shared_backend", "shared backend")):
        if d.get(f"ksm_missed_{key}"):
            t.add_row(f"  of which {why}", *_pages(d[f"ksm_missed_{key}"], ps))
    console.print(t)

    if r["top_duplicates"]:
        console.print(top_table(r["top_duplicates"], by_kind=True))

    g = r.get("guest")
    if g:
        t = Table(title="Guest", title_justify="left")
        t.add_column("")
        t.add_column("", justify="right")
        t.add_row("name", escape(str(g["name"] or "")))
        t.add_row("RAM (-m)", f"{g['ram_bytes'] >> 20:,} MiB")
        t.add_row("machine / accel", f"{g['machine'] or 'pc'} / {g['accel']}")
        ram = g.get("ram") or {}
        t.add_row("RAM backed by", escape(backing_label(ram)))
        t.add_row("mem-merge (what QEMU asked)", "yes" if g["mem_merge"] else "no")
        t.add_row(
            "KSM can merge guest RAM", _ksm_can(ram.get("ksm_can_merge"), ram.get("ksm_barrier"))
        )
        if "gpa_map_error" in g:
            t.add_row("guest-physical map", escape(g["gpa_map_error"]))
        else:
            t.add_row("guest-physical map from", escape(str(g["gpa_map_source"])))
            t.add_row(
                "guest pages backed by a host page",
                f"{g['backed_pages']:,} of {g['guest_pages']:,}",
            )
            for block, b in g["blocks"].items():
                on = f" ({escape(b['backing'])})" if b.get("backing") else ""
                t.add_row(f"  {escape(block)}{on}", f"{b['backed']:,} of {b['pages']:,}")
                if b.get("zero"):
                    t.add_row("    backed but all zeros (never used)", f"{b['zero']:,}")
        within = next((r for r in g.get("dedup_matrix", []) if r["row"] == "within"), None)
        if within:
            t.add_row("duplicated within the guest (pages)", f"{within['total']:,}")
            t.add_row("  of which KSM can merge", f"{within['ksm_reachable']:,}")
        for cls, n in g.get("guest_classes", {}).items():
            t.add_row(f"guest says {cls}", f"{n:,} pages")
        if g.get("bloat"):
            b = g["bloat"]
            t.add_row("cold inactive-LRU pages", f"{b['cold_pages']:,}")
            if b["bloat_mib"] is not None:
                t.add_row("  not duplicated in the guest (bloat)", f"{b['bloat_mib']:,.1f} MiB")
            if b.get("warning"):
                t.add_row("  note", escape(b["warning"]))
        console.print(t)

    console.print(coverage_line(r["coverage"]))


def coverage_line(c: dict[str, Any]) -> str:
    """The one-line coverage statement every report ends with (see dedupx.model.coverage)."""
    missing = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in c["not_covered"].items() if v)
    return (
        f"Coverage: {c['pages_hashed']:,} of {c['pages_in_scope']:,} {c['scope']} hashed "
        f"({c['hashed_share']:.1%}) via {c['source']}"
        + (f"; not covered: {missing}." if missing else ".")
    )


def render_snapshot_report(r: dict[str, Any], console: Console) -> None:
    console.print(
        f"[bold]Snapshot[/bold] {r['path']} ({r['kind']}, {r['hostname']}, kernel "
        f"{r['kernel']}, {r['created']}); source: {r['source']}"
    )
    if "groups" in r:
        t = Table(title="Footprint by group (MiB)", title_justify="left")
        for col, just in (
            ("group", "left"),
            ("processes", "right"),
            ("RSS", "right"),
            ("PSS", "right"),
            ("USS", "right"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for g in r["groups"]:
            t.add_row(
                g["group"],
                str(g["processes"]),
                _mib(g["rss_bytes"]),
                _mib(g["pss_bytes"]),
                _mib(g["uss_bytes"]),
            )
        console.print(t)
        t = Table(title="Largest processes by PSS (MiB)", title_justify="left")
        for col, just in (
            ("pid", "right"),
            ("comm", "left"),
            ("kind", "left"),
            ("RSS", "right"),
            ("PSS", "right"),
            ("USS", "right"),
            ("changed while read", "left"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for p in r["processes"]:
            t.add_row(
                str(p["pid"]),
                escape(p["comm"] or ""),
                p["kind"] or "",
                _mib(p["rss_bytes"]),
                _mib(p["pss_bytes"]),
                _mib(p["uss_bytes"]),
                describe(p) if p.get("changed") else "",
            )
        console.print(t)
        changed = r.get("changed_while_read") or []
        if changed:
            console.print(
                f"[yellow]{len(changed):,} processes changed while read (at least the "
                "pages and mappings shown): their figures mix two moments.[/yellow]"
            )
    console.print(
        savings_table(
            r["duplicates"],
            (
                ("zero_content", "  of which zero-filled"),
                ("ksm_reachable", "KSM-reachable (anon, mergeable)"),
            ),
        )
    )
    if r["top_duplicates"]:
        console.print(top_table(r["top_duplicates"], by_kind=False))
    if r.get("vms"):
        render_vm_reports(r["vms"], console)
    if r.get("containers"):
        render_container_reports(r["containers"], console)
    if r["coverage"]:
        console.print(coverage_line(r["coverage"]))


MATRIX_ROWS = {
    "host": "with the host",
    "vm": "with other VMs",
    "container": "with other containers",
}


def matrix_tables(
    title: str, matrix: list[dict[str, Any]], target: str = "VM"
) -> tuple[Table, Table]:
    """The dedup matrix as the study prints it (rows within / host / VM-VM and a total;
    columns by kind, in MiB), then what KSM reaches and misses of each row, in MiB: two
    tables that fit 80 columns. ``target`` names what the matrix is of ("VM", "container")."""
    labels = {"within": f"within the {target}", **MATRIX_ROWS}
    kinds = Table(title=f"{title}: duplicated memory (MiB)", title_justify="left")
    ksm = Table(title="  of which KSM (MiB)", title_justify="left")
    kinds.add_column("")
    ksm.add_column("")
    for label in ("anon/anon", "file/file", "anon/file", "total", "zeros"):
        kinds.add_column(label, justify="right")
    for label in ("reaches", "in THPs", "misses: file", "not mergeable"):
        ksm.add_column(label, justify="right")

    def cells(row: dict[str, Any], keys: tuple[str, ...]) -> list[str]:
        return [f"{pages_to_mib(row[k]):,.1f}" for k in keys]

    for row in matrix:
        label = labels.get(row["row"], row["row"])
        style = "bold" if row["row"] == "total" else None
        kinds.add_row(
            label,
            *cells(row, ("anon_anon", "file_file", "anon_file", "total", "zero")),
            style=style,
        )
        ksm.add_row(
            label,
            *cells(row, ("ksm_reachable", "ksm_reachable_thp", "missed_file")),
            f"{pages_to_mib(row['missed_not_mergeable']):,.1f}",
            style=style,
        )
    return kinds, ksm


def backend_notes(matrix: list[dict[str, Any]], ram: dict[str, Any] | None) -> list[str]:
    """What the RAM's backing changes in a matrix, as plain lines: copies KSM cannot reach
    and why, and the savings held in hugetlb pages, which are freed only whole."""
    total = next((r for r in matrix if r["row"] == "total"), None)
    if total is None:
        return []
    out = []
    if ram and not ram.get("ksm_can_merge") and ram.get("ksm_barrier"):
        asked = "asked" if ram.get("mem_merge") else "did not ask"
        out.append(
            f"KSM cannot merge this guest's RAM ({ram['ksm_barrier']}); "
            f"QEMU {asked} for merging (mem-merge)."
        )
    for key, why in (("missed_hugetlb", "hugetlb"), ("missed_shared_backend", "shared backend")):
        if total.get(key):
            out.append(f"  KSM misses {pages_to_mib(total[key]):,.1f} MiB: {why}.")
    if total.get("hugetlb"):
        out.append(
            f"In hugetlb pages: {pages_to_mib(total['hugetlb']):,.1f} MiB of the savings at "
            f"4 KiB; {pages_to_mib(total['hugetlb_whole']):,.1f} MiB reachable without "
            "splitting a huge page (freed whole)."
        )
    return out


def cost_table(uss: dict[str, Any], cost: dict[str, Any]) -> Table:
    """What a VM costs (MiB): its USS now and its incremental cost given the others once
    KSM has merged what it can (the study's Figures 6.3/6.4), by cause."""
    t = Table(title="What this VM costs (MiB)", title_justify="left")
    t.add_column("")
    t.add_column("USS now", justify="right")
    t.add_column(f"incremental ({cost['policy']})", justify="right")
    t.add_row("total", _mib_pages(uss["pages"]), _mib_pages(cost["pages"]), style="bold")
    t.add_row("QEMU's own", _mib_pages(uss["qemu_pages"]), _mib_pages(cost["qemu_pages"]))
    for part, pages in cost["by_part"].items():
        if part != "guest RAM":
            t.add_row(f"  {escape(part)}", "", _mib_pages(pages))
    t.add_row("guest RAM", _mib_pages(uss["guest_ram_pages"]), _mib_pages(cost["guest_ram_pages"]))
    blocks = sorted(set(uss["guest_ram_by_block"]) | set(cost["guest_ram_by_block"]))
    for b in blocks:
        t.add_row(
            f"  {escape(b)}",
            _mib_pages(uss["guest_ram_by_block"].get(b, 0)),
            _mib_pages(cost["guest_ram_by_block"].get(b, 0)),
        )
    classes = sorted(
        set(uss.get("guest_ram_by_class", {})) | set(cost.get("guest_ram_by_class", {}))
    )
    for c in classes:
        t.add_row(
            f"  guest says {escape(c)}",
            _mib_pages(uss.get("guest_ram_by_class", {}).get(c, 0)),
            _mib_pages(cost.get("guest_ram_by_class", {}).get(c, 0)),
        )
    return t


def device_table(devices: list[dict[str, Any]]) -> Table:
    """Memory held by each emulated device's RAM blocks (the study's Table 6.5)."""
    t = Table(title="Device memory (RAM blocks; device heap is not attributable)")
    t.title_justify = "left"
    for col in ("block", "device", "resident MiB", "PSS MiB", "freed if removed"):
        t.add_column(col, justify="left" if col in ("block", "device") else "right")
    for d in devices:
        t.add_row(
            escape(d["block"]),
            d["device"],
            _mib_pages(d["resident_pages"]),
            f"{d['pss_mib']:,.1f}",
            _mib_pages(d["uss_pages"]),
        )
    return t


def _mib_pages(pages: int) -> str:
    return f"{pages_to_mib(pages):,.1f}"


def render_vm_reports(vms: list[dict[str, Any]], console: Console) -> None:
    for vm in vms:
        name = f"VM {vm['pid']} ({escape(vm['comm'] or '')})"
        if vm.get("ram"):
            name += f"; RAM: {escape(backing_label(vm['ram']))}"
        for t in matrix_tables(name, vm["dedup_matrix"]):
            console.print(t)
        for line in backend_notes(vm["dedup_matrix"], vm.get("ram")):
            console.print(escape(line))
        uss, cost = vm.get("uss"), vm.get("incremental_cost")
        if uss and cost:
            console.print(cost_table(uss, cost))
            console.print(
                f"{uss['unique_contents']:,} contents found nowhere else; "
                f"{uss['guest_not_backed']:,} guest pages not backed by host memory."
            )
        if vm.get("devices"):
            console.print(device_table(vm["devices"]))
        elif "incremental_cost_error" in vm:
            console.print(f"Incremental cost: {escape(vm['incremental_cost_error'])}")
        bloat = vm.get("bloat")
        if bloat:
            note = f" ({bloat['warning']})" if bloat.get("warning") else ""
            mib = bloat["bloat_mib"]
            console.print(
                f"Inactive-LRU bloat: {bloat['cold_pages']:,} cold pages, "
                + (
                    f"{mib:,.1f} MiB not duplicated elsewhere in the guest"
                    if mib is not None
                    else "no hashes from the guest to subtract duplicates"
                )
                + note
            )


DENSITY_NS = (1, 2, 4, 8, 16, 32, 64)


def render_density(r: dict[str, Any], console: Console) -> None:
    """The density curve at a few N, one column per policy, and how many fit."""
    curve = {(p["policy"], p["n"]): p for p in r["curve"]}
    n_max = r["summary"]["n_max"]
    ns = [n for n in DENSITY_NS if n <= n_max] + ([n_max] if n_max not in DENSITY_NS else [])
    k = len(r["summary"]["instances"])
    t = Table(
        title=f"Average PSS per {r['summary']['kind']} as instances are added (MiB), "
        f"from {k} captured",
        title_justify="left",
    )
    t.add_column("N", justify="right")
    for policy in ("none", "ksm", "perfect"):
        t.add_column(DENSITY_LABELS[policy], justify="right")
    for n in ns:
        t.add_row(str(n), *(f"{curve[(p, n)]['avg_pss_mib']:,.1f}" for p in DENSITY_LABELS))
    console.print(t)
    s = r["summary"]
    console.print(f"Measured now: {s['measured_avg_pss_bytes'] / MIB:,.1f} MiB per instance.")
    if s["ram_for_instances_bytes"] is not None:
        fits = ", ".join(f"{DENSITY_LABELS[p]} {n:,}" for p, n in s["fits"].items())
        console.print(
            f"Fit in {s['ram_for_instances_bytes'] / MIB:,.0f} MiB left for instances: {fits}"
            + (" (or more: raise --n-max)" if n_max in s["fits"].values() else "")
        )


DENSITY_LABELS = {"none": "no merging", "ksm": "KSM", "perfect": "perfect merging"}


def render_container_reports(containers: list[dict[str, Any]], console: Console) -> None:
    """Each container: its processes and footprint (the sum of theirs), then its matrix."""
    for c in containers:
        names = ", ".join(sorted(set(c["comms"])))
        noun = "process" if c["processes"] == 1 else "processes"
        console.print(
            f"[bold]Container[/bold] {escape(c['cgroup'])}: {c['processes']} {noun} "
            f"({escape(names)}); PSS {_mib(c['pss_bytes'])} MiB, RSS {_mib(c['rss_bytes'])} "
            f"MiB, USS {_mib(c['uss_bytes'])} MiB"
        )
        title = f"Container {escape(c['cgroup'])}"
        for t in matrix_tables(title, c["dedup_matrix"], target="container"):
            console.print(t)


def render_compare(row: dict[str, Any], a: str, b: str, console: Console) -> None:
    t = Table(title=f"B = {escape(b)} against A = {escape(a)}", title_justify="left")
    t.add_column("")
    t.add_column("frames", justify="right")
    t.add_column("MiB", justify="right")
    t.add_column("distinct contents", justify="right")
    for label, f, c in (
        ("A", row["a_frames"], row["a_contents"]),
        ("B", row["b_frames"], row["b_contents"]),
        ("B shared with A", row["shared"], row["shared_contents"]),
        ("  of which zero-filled", row["shared_zero"], 1 if row["shared_zero"] else 0),
        ("B only (incremental cost)", row["b_only"], row["b_only_contents"]),
    ):
        t.add_row(label, f"{f:,}", f"{pages_to_mib(f):,.1f}", f"{c:,}")
    console.print(t)


def render_vms(rows: list[dict[str, Any]], console: Console) -> None:
    if not rows:
        console.print("No QEMU guests on this host.")
        return
    t = Table(title="QEMU guests", title_justify="left")
    for col, just in (
        ("pid", "right"),
        ("name", "left"),
        ("RAM MiB", "right"),
        ("machine", "left"),
        ("accel", "left"),
        ("mem-merge", "left"),
        ("KSM can merge", "left"),
        ("RSS MiB", "right"),
        ("PSS MiB", "right"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(
            str(r["pid"]),
            escape(str(r["name"] or "")),
            f"{r['ram_bytes'] // MIB:,}",
            escape(str(r["machine"])),
            str(r["accel"]),
            "yes" if r["mem_merge"] else "no",
            _ksm_can(r.get("ksm_can_merge"), r.get("ksm_barrier")),
            _mib(r["rss_bytes"]),
            _mib(r["pss_bytes"]),
        )
    console.print(t)


def _ksm_can(can: bool | None, barrier: str | None) -> str:
    """ "yes", or "no (hugetlb)": what KSM can do, apart from what QEMU asked."""
    if can is None:
        return "?"
    return "yes" if can else f"no ({barrier})" if barrier else "no"
