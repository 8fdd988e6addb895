"""The `dedupx` command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import click
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from dedupx._dedupx import __version__
from dedupx.analysis.compare import compare
from dedupx.analysis.density import density, density_summary
from dedupx.analysis.fingerprint import EXACT_LIMIT, fingerprint
from dedupx.analysis.fingerprint import summary as fingerprint_summary
from dedupx.analysis.placement import place as placement
from dedupx.exceptions import DedupxError, OutputError, UsageError
from dedupx.fleet.cluster import client_for, fleet_on_dask
from dedupx.fleet.inputs import expand as expand_inputs
from dedupx.model.units import MIB, pages_to_mib
from dedupx.qemu.cmdline import parse_qemu_cmdline, ram_bound
from dedupx.qemu.guests import find_guests, guest_ram_bound
from dedupx.report.fleet import fleet_report, render_fleet, render_placement
from dedupx.report.html import build_report, write_report
from dedupx.report.process import process_report
from dedupx.report.snapshot import snapshot_report
from dedupx.report.terminal import (
    render_compare,
    render_density,
    render_process_report,
    render_snapshot_report,
    render_vms,
)
from dedupx.sources.capture import load
from dedupx.sources.guest_view import GuestView, read_guest_agent, read_guest_qga
from dedupx.sources.host import snapshot
from dedupx.sources.image import FORMATS, image_snapshot
from dedupx.sources.process import ProcessScan, ProgressCallback, scan, scan_largest
from dedupx.store.parquet import remove_stale_partials, write_frames
from dedupx.store.snapshot import base_manifest, open_snapshot

STAGES = {
    "processes": "reading processes",
    "pagemap": "reading page tables",
    "kpageflags": "reading page flags",
    "hash": "hashing pages",
    "pages": "writing pages",
    "frames": "writing frames",
}


# What a guest may claim as RAM when its QEMU's command line cannot be read.
MAX_GUEST_RAM = 64 << 30


@contextmanager
def progress_bar(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr, only when stderr is a terminal and not --quiet."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def update(stage: str, done: int, total: int) -> None:
            bar.update(task, description=STAGES.get(stage, stage), completed=done, total=total)

        yield update


def fail(err: DedupxError) -> None:
    click.echo(f"dedupx: error: {err}", err=True)
    sys.exit(err.exit_code)


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Expected failures become one line on stderr and an exit code, never a traceback."""
    try:
        return fn()
    except DedupxError as e:
        fail(e)
    except KeyboardInterrupt:
        click.echo("dedupx: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)


# --agent-binary: what it does, for scan, analyze and report alike.
AGENT_BINARY_HELP = (
    "With --qga: copy this static dedupx-agent (make agent) into the guest through its "
    "guest agent, run it there as root and read its file back, so that the guest's view "
    "has page hashes too; no initramfs to rebuild. It may run 60 s plus 240 s per GiB of "
    "guest RAM (it hashes all of it); its files in the guest are removed. Without this "
    "option dedupx never writes into a guest. Default: $DEDUPX_AGENT."
)


def agent_binary_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--agent-binary",
        "agent_binary",
        envvar="DEDUPX_AGENT",
        type=click.Path(dir_okay=False),
        metavar="PATH",
        help=AGENT_BINARY_HELP,
    )(f)


def check_agent_binary(agent_binary: str | None, qga: bool) -> None:
    """--agent-binary given on the command line without --qga is a mistake; from
    $DEDUPX_AGENT it only waits for a --qga."""
    ctx = click.get_current_context(silent=True)
    source = ctx.get_parameter_source("agent_binary") if ctx else None
    if agent_binary and not qga and source == click.core.ParameterSource.COMMANDLINE:
        raise UsageError("--agent-binary runs the agent through --qga: give --qga too")


def guest_view_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--guest PID=FILE, --qga PID=SOCKET and --agent-binary: a guest's own view, for
    analyze and report."""
    f = agent_binary_option(f)
    f = click.option(
        "--qga",
        "qga_sockets",
        multiple=True,
        metavar="PID=SOCKET",
        help="The guest agent socket of the guest whose QEMU process is PID (repeatable).",
    )(f)
    return click.option(
        "--guest",
        "guest_files",
        multiple=True,
        metavar="PID=FILE",
        help="A dedupx-agent file written inside the guest whose QEMU process is PID (repeatable).",
    )(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dedupx")
def main() -> None:
    """dedupx: how much memory each process really costs, and which of its pages have
    identical content (and could be merged by KSM, or not).

    Needs root: it reads /proc/PID/pagemap with PFNs, /proc/kpageflags and
    /proc/kpagecount. It only reads: it never faults in, swaps in or writes a page.
    """


@main.command("scan")
@click.option(
    "--pid", "-p", type=int, help="Process to scan (default: the largest one dedupx may read)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--parquet",
    "parquet_dir",
    type=click.Path(file_okay=False),
    help="Also save the scan as a snapshot directory (Parquet frames) that analyze opens.",
)
@click.option("--top", default=10, show_default=True, help="How many duplicated contents to list.")
@click.option("--threads", default=0, help="Worker threads (default: one per core).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--proc-root",
    default="/proc",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the host's procfs is mounted (e.g. /host/proc inside a container).",
)
@click.option(
    "--guest",
    "guest_file",
    type=click.Path(dir_okay=False),
    help="For a QEMU process: a dedupx-agent file written inside its guest.",
)
@click.option(
    "--qga",
    "qga_socket",
    type=click.Path(dir_okay=False),
    help="For a QEMU process: its guest agent's socket, to read the guest's page flags "
    "(and hashes, with --agent-binary).",
)
@agent_binary_option
@click.option(
    "--qmp",
    "qmp_socket",
    type=click.Path(dir_okay=False),
    help="For a QEMU process: its QMP socket (default: one its command line names).",
)
@click.option(
    "--ept",
    "ept_file",
    type=click.Path(dir_okay=False),
    help="For a QEMU process: an external EPT dump (CSV or Parquet of gpa, hpa) to map it.",
)
def scan_cmd(
    pid: int | None,
    as_json: bool,
    parquet_dir: str | None,
    top: int,
    threads: int,
    quiet: bool,
    proc_root: str,
    guest_file: str | None,
    qga_socket: str | None,
    agent_binary: str | None,
    qmp_socket: str | None,
    ept_file: str | None,
) -> None:
    """Scan one process: footprint (RSS/PSS/USS), page classes, duplicate contents by kind
    (anon/anon, file/file, anon/file), what KSM can reach and what it misses, the most
    duplicated contents and where they live, and how much was hashed.

    Duplicates are counted over distinct physical pages: a page shared already (including
    the kernel's zero page) costs nothing extra and is not a duplicate.
    """

    def work() -> None:
        if guest_file and qga_socket:
            raise UsageError("give --guest or --qga, not both")
        check_agent_binary(agent_binary, bool(qga_socket))
        started = time.monotonic()
        with progress_bar(not quiet) as update:
            if pid is None:
                result = scan_largest(threads=threads, progress=update, proc_root=proc_root)
                click.echo(
                    f"dedupx: scanning PID {result.pid} ({result.comm}), the largest process",
                    err=True,
                )
            else:
                result = scan(pid, threads=threads, progress=update, proc_root=proc_root)
        seconds = time.monotonic() - started
        view = (
            read_guest_agent(guest_file)
            if guest_file
            else read_guest_qga(
                qga_socket,
                agent=agent_binary,
                max_guest_ram=ram_bound(parse_qemu_cmdline(result.cmdline))
                if result.is_guest
                else MAX_GUEST_RAM,
            )
            if qga_socket
            else None
        )
        gpa_map, gpa_map_error = guest_map_or_error(result, qmp_socket, ept_file)
        report = process_report(
            result, top=top, guest=view, gpa_map=gpa_map, gpa_map_error=gpa_map_error
        )
        report["seconds"] = round(seconds, 3)
        if parquet_dir:
            save_scan(result, gpa_map, report["coverage"], parquet_dir)
        if as_json:
            click.echo(json.dumps(report, default=str))
        else:
            console = Console()
            render_process_report(report, console)
            console.print(f"Scanned in {seconds:.2f} s on {report['threads']} threads.")
            if parquet_dir:
                console.print(f"Snapshot written to {parquet_dir}")

    run_guarded(work)


def guest_map_or_error(
    result: ProcessScan, qmp: str | None, ept: str | None
) -> tuple[pl.DataFrame | None, str | None]:
    """For a QEMU process, its guest map (from QMP, an EPT dump or the command line), or
    why it could not be made: a report says so rather than failing."""
    if not result.is_guest:
        return None, None
    try:
        return result.guest_map(qmp=qmp, ept=ept), None
    except DedupxError as e:
        return None, str(e)


def save_scan(
    result: ProcessScan, gpa_map: pl.DataFrame | None, coverage: dict[str, Any], out: str
) -> None:
    """A scan as a snapshot directory that ``dedupx analyze`` and ``open_snapshot`` open."""
    frames: dict[str, pl.DataFrame] = {
        "processes": result.processes(),
        "vmas": result.vmas,
        "pages": result.pages,
        "frames": result.frames,
    }
    if gpa_map is not None:
        frames["gpa_map"] = gpa_map
    manifest = base_manifest("process-scan", coverage["source"], coverage)
    manifest["pid"] = result.pid
    manifest["comm"] = result.comm
    manifest["scan"] = result.stats
    clean_stale(out)
    write_frames(out, frames, manifest)


def clean_stale(out: str) -> None:
    """Removes what earlier, killed writes of ``out`` left behind, and says so."""
    for p in remove_stale_partials(out):
        click.echo(f"dedupx: removed {p}, left by a snapshot that was killed", err=True)


def default_snapshot_dir() -> str:
    return time.strftime("dedupx-snapshot-%Y%m%d-%H%M%S")


@main.command("snapshot")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="New directory to write (default: ./dedupx-snapshot-DATE-TIME).",
)
@click.option("--threads", default=0, help="Worker threads (default: one per core).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option(
    "--proc-root",
    default=None,
    type=click.Path(file_okay=False),
    help="Where the host's procfs is mounted (default /proc).",
)
@click.option(
    "--no-page-cache",
    is_flag=True,
    help="Without kcore, do not walk the local filesystems for cached file pages no process "
    "maps (the walk reads only pages already cached, never from disk).",
)
def snapshot_cmd(
    output: str | None, threads: int, quiet: bool, proc_root: str | None, no_page_cache: bool
) -> None:
    """Capture the whole host into a snapshot directory: every process (processes, vmas,
    pages) and every page of System RAM (frames) with its flags and, wherever its bytes can
    be read, its hash. Physical memory is read from /proc/kcore, /dev/crash or /dev/mem when
    one is readable; otherwise every page some process maps is hashed, each once, and so
    is every cached page of the files of local disk filesystems (the host's page cache);
    the manifest says what was not covered. The directory appears only when complete
    (0600).
    """
    out = output or default_snapshot_dir()

    def work() -> None:
        clean_stale(out)
        with progress_bar(not quiet) as update:
            path = snapshot(
                out,
                threads=threads,
                progress=update,
                proc_root=proc_root,
                page_cache=not no_page_cache,
            )
        m = open_snapshot(path).provenance.manifest
        c = m["coverage"]
        by = ", ".join(f"{k} {v:,}" for k, v in c.get("hashed_by_source", {}).items())
        click.echo(
            f"Snapshot written to {path}: {m['rows']['pages']:,} mapped pages of "
            f"{m['processes']} processes, {c['pages_hashed']:,} of {c['pages_in_scope']:,} "
            f"pages of RAM hashed via {c['source']}" + (f" ({by})." if by else ".")
        )
        walk = m.get("scan", {}).get("page_cache")
        if walk:
            click.echo(
                f"Page cache: {walk['files']:,} files walked in {walk['seconds']:.1f} s, "
                f"{walk['files_cached']:,} with cached pages, {walk['pages_hashed']:,} pages "
                f"hashed ({pages_to_mib(walk['pages_hashed']):,.0f} MiB)."
            )

    run_guarded(work)


@main.command("image")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False),
    help="New snapshot directory to write (default: FILE.dedupx).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    help="Image format (default: detected by magic; anything not ELF or LiME is raw).",
)
@click.option("--threads", default=0, help="Worker threads (default: one per core).")
@click.option(
    "--max-gib",
    default=1024,
    show_default=True,
    help="Refuse an image that declares more memory than this (a sparse file can declare "
    "terabytes that cost minutes and much disk to write out).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def image_cmd(
    file: str, output: str | None, fmt: str | None, threads: int, max_gib: int, quiet: bool
) -> None:
    """Turn a memory image into a snapshot whose frames are keyed by physical page number:
    raw flat dumps, ELF cores (QEMU dump-guest-memory, copies of /proc/kcore, vmcores) and
    LiME. Zero pages and sparse holes are recognised without hashing them. The image is
    hashed and written a window at a time: memory stays bounded whatever its size."""
    out = output or f"{file}.dedupx"

    def work() -> None:
        clean_stale(out)
        with progress_bar(not quiet) as update:
            path = image_snapshot(
                file, out, format=fmt, threads=threads, progress=update, max_bytes=max_gib << 30
            )
        m = open_snapshot(path).provenance.manifest
        click.echo(
            f"Snapshot written to {path}: {m['rows']['frames']:,} pages "
            f"({m['image']['zero_pages']:,} zero) from a {m['image']['format']} image."
        )

    run_guarded(work)


@main.command("fingerprint")
@click.argument("snapshot_dir", type=click.Path(file_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="Parquet file to write (one row per instance and distinct content).",
)
@click.option("--host", help="The host's name in the fleet (default: the snapshot's hostname).")
@click.option(
    "--rate",
    type=float,
    help="Keep this share of contents for every instance (default: exact up to "
    f"{EXACT_LIMIT:,} distinct contents per instance, sampled beyond).",
)
def fingerprint_cmd(snapshot_dir: str, output: str, host: str | None, rate: float | None) -> None:
    """Write the fingerprints of a snapshot's instances (each VM, container, and the host's
    own pages) for fleet analysis: their distinct page contents, exact or a sample whose
    error is stated (docs/fleet.md)."""

    def work() -> None:
        fp = fingerprint(open_snapshot(snapshot_dir), host=host, rate=rate)
        write_parquet_file(fp, output)
        for r in fingerprint_summary(fp):
            click.echo(
                f"{r['instance']}: {r['kept']:,} contents kept of ~{r['contents']:,} "
                f"(rate {r['rate']:.3g})"
            )

    run_guarded(work)


@main.command("fleet")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="A Dask scheduler (tcp://host:8786); default: a LocalCluster here.",
)
@click.option("--workers", default=2, show_default=True, help="LocalCluster worker processes.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Also write the pair matrix as Parquet."
)
@click.option("--top", default=10, show_default=True, help="Rows in each table.")
@click.option(
    "--place",
    is_flag=True,
    help="Also propose where each VM should run to share more (docs/fleet.md).",
)
@click.option(
    "--capacity-gib",
    type=int,
    help="Each host's RAM for --place (default: as each host's fingerprint states).",
)
def fleet_cmd(
    inputs: tuple[str, ...],
    scheduler: str | None,
    workers: int,
    as_json: bool,
    output: str | None,
    top: int,
    place: bool,
    capacity_gib: int | None,
) -> None:
    """Sharing across a fleet: read fingerprint files or snapshot directories (paths,
    globs, fsspec URLs) on Dask and give, for every pair of instances on any hosts, the
    pages they would share if co-located (anon/anon, file/file, anon/file, KSM-reachable),
    and what each host's instances share now. An input that cannot be read is named on
    stderr and left out; the rest are analysed."""

    def work() -> None:
        paths = expand_inputs(list(inputs))
        if not paths:
            raise UsageError("the paths and globs name no input")
        with client_for(scheduler, workers, timeout=10.0) as client:
            result = fleet_on_dask(paths, client=client, gather=place)
        for e in result.errors:
            click.echo(f"dedupx: warning: left out {e}", err=True)
        if output:
            write_parquet_file(result.matrix, output)
        plan = None
        if place and result.fingerprints is not None:
            caps = None
            if capacity_gib:
                hosts = result.fingerprints["host"].unique()
                caps = {h: capacity_gib << 30 for h in hosts}
            plan = placement(result.fingerprints, caps)
        if as_json:
            report = fleet_report(result.matrix, result.instances, result.errors)
            click.echo(json.dumps({**report, "placement": plan}, default=str))
        else:
            render_fleet(result.matrix, result.instances, top, Console())
            if plan is not None:
                render_placement(plan, top, Console())

    run_guarded(work)


def write_parquet_file(frame: pl.DataFrame, path: str) -> None:
    try:
        frame.write_parquet(path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


@main.command("analyze")
@click.argument("snapshot_dir", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--top", default=10, show_default=True, help="How many rows in the top lists.")
@guest_view_options
def analyze_cmd(
    snapshot_dir: str,
    as_json: bool,
    top: int,
    guest_files: tuple[str, ...],
    qga_sockets: tuple[str, ...],
    agent_binary: str | None,
) -> None:
    """Analyse a saved snapshot: footprint per process and per group (each VM, containers
    by cgroup, other host processes), host-wide duplicates by kind with KSM's reach, the
    most duplicated contents and where they live, and coverage. For each VM: its dedup
    matrix (within itself, with the host, with other VMs; what KSM can reach and misses)
    its USS and its incremental cost (what one more adds once KSM merges), by cause; with
    --guest, its RAM by what the guest says and its cold
    inactive-LRU memory. For each container (the processes of one cgroup): its processes,
    its footprint (the sum of theirs) and its dedup matrix (within itself, with the host,
    with other containers)."""

    def work() -> None:
        guests = parse_guest_specs(guest_files, qga_sockets, agent_binary)
        report = snapshot_report(open_snapshot(snapshot_dir), top=top, guests=guests)
        if as_json:
            click.echo(json.dumps(report, default=str))
        else:
            render_snapshot_report(report, Console())

    run_guarded(work)


@main.command("density")
@click.argument("snapshot_dir", type=click.Path(file_okay=False))
@click.option(
    "--kind",
    type=click.Choice(["vm", "container"]),
    default="vm",
    show_default=True,
    help="Which instances to project: VMs (QEMU processes) or containers (by cgroup).",
)
@click.option(
    "--instance",
    "instance_specs",
    multiple=True,
    metavar="PID[,PID...]",
    help="One instance's processes (repeatable); default: every instance of --kind.",
)
@click.option("--n-max", default=64, show_default=True, help="Project N = 1 ... this.")
@click.option(
    "--ram", "ram_mib", type=int, help="RAM for instances in MiB (default: what is left)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def density_cmd(
    snapshot_dir: str,
    kind: str,
    instance_specs: tuple[str, ...],
    n_max: int,
    ram_mib: int | None,
    as_json: bool,
) -> None:
    """Predict the average footprint (PSS) per instance as N identical VMs or containers run
    (N = 1 ... --n-max), from a snapshot holding one or more of them, under no merging, KSM
    as configured on this host, and perfect merging of equal content; and how many fit in
    RAM. Capture two instances to tell what they share from what each holds alone. The
    model: docs/density.md."""

    def work() -> None:
        instances = [parse_pids(spec) for spec in instance_specs] or None
        snap = open_snapshot(snapshot_dir)
        curve = density(snap, kind=kind, instances=instances, n_max=n_max)
        ram = ram_mib * MIB if ram_mib is not None else None
        summary = density_summary(snap, curve, kind=kind, instances=instances, ram_bytes=ram)
        report = {"summary": summary, "curve": curve.to_dicts()}
        if as_json:
            click.echo(json.dumps(report))
        else:
            render_density(report, Console())

    run_guarded(work)


def parse_pids(spec: str) -> list[int]:
    pids = [p.strip() for p in spec.split(",")]
    if not pids or not all(p.isdigit() for p in pids):
        raise UsageError(f"--instance takes PID[,PID...], not {spec!r}")
    return [int(p) for p in pids]


@main.command("compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def compare_cmd(a: str, b: str, as_json: bool) -> None:
    """Compare two captures (snapshot directories or memory images): how many of B's frames
    hold content that A also holds (shared) and how many do not (b_only: B's incremental
    cost given A). For two guests' dumps, or one guest before and after."""

    def work() -> None:
        row = compare(load(a), load(b)).row(0, named=True)
        if as_json:
            click.echo(json.dumps(row))
        else:
            render_compare(row, a, b, Console())

    run_guarded(work)


@main.command("vms")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def vms_cmd(as_json: bool) -> None:
    """List the QEMU/KVM guests on this host: PID, name (-name), RAM (-m), machine,
    accelerator, mem-merge as QEMU asked it and, apart, whether KSM can merge their RAM
    (not on hugetlbfs or a shared backend), memory backends, QMP sockets, and footprint
    (RSS/PSS of the QEMU process; hugetlb pages are not in them, as in smaps)."""

    def work() -> None:
        rows = [g.row() for g in find_guests()]
        if as_json:
            click.echo(json.dumps(rows))
        else:
            render_vms(rows, Console())

    run_guarded(work)


@main.command("report")
@click.argument("target")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="The HTML file to write: one self-contained file, viewable offline.",
)
@click.option(
    "--png", "png_dir", type=click.Path(file_okay=False), help="Also write each figure as PNG."
)
@click.option(
    "--svg", "svg_dir", type=click.Path(file_okay=False), help="Also write each figure as SVG."
)
@click.option("--top", default=10, show_default=True, help="How many rows in the top lists.")
@guest_view_options
@click.option(
    "--threads", default=0, help="Worker threads for a live scan (default: one per core)."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress.")
def report_cmd(
    target: str,
    output: str | None,
    png_dir: str | None,
    svg_dir: str | None,
    top: int,
    guest_files: tuple[str, ...],
    qga_sockets: tuple[str, ...],
    agent_binary: str | None,
    threads: int,
    quiet: bool,
) -> None:
    """Write one HTML report of a snapshot directory, or of a process scanned now when TARGET
    is a PID: footprint by group and process, the dedup matrix of each VM and container, each
    VM's incremental cost (QEMU's own and guest RAM by block and guest class), KSM's reach,
    bloat, coverage, and figures: density curves (the study's Figure 6.2), cost breakdown
    (6.3, 6.4), matrix heatmaps (Table 6.4) and the most duplicated contents. The file
    inlines everything it needs: it opens offline. --png/--svg write the figures alone."""

    def work() -> None:
        if not (output or png_dir or svg_dir):
            raise UsageError("give -o FILE.html, --png DIR or --svg DIR")
        guests = parse_guest_specs(guest_files, qga_sockets, agent_binary)
        if target.isdigit():
            with progress_bar(not quiet) as update:
                result = scan(int(target), threads=threads, progress=update)
            frames = result.to_frames()
            gpa_map, _ = guest_map_or_error(result, None, None)
            if gpa_map is not None:
                frames = frames.with_gpa_map(gpa_map)
        else:
            frames = open_snapshot(target)
        # A spinner naming the step under way, on a terminal only (the scan had its bar).
        status = (
            Console(stderr=True).status("starting") if not quiet and sys.stderr.isatty() else None
        )

        def step(what: str) -> None:
            if status is not None:
                status.update(what)

        with status if status is not None else nullcontext():
            report = build_report(frames, top=top, guests=guests, step=step)
            written = write_report(report, output, png_dir, svg_dir, step=step)
        for path in written:
            click.echo(f"Wrote {path}")

    run_guarded(work)


def parse_guest_specs(
    guest_files: tuple[str, ...], qga_sockets: tuple[str, ...], agent_binary: str | None = None
) -> dict[int, GuestView]:
    """--guest PID=FILE and --qga PID=SOCKET, read into each guest's own view; with
    --agent-binary, dedupx-agent runs in each --qga guest."""
    check_agent_binary(agent_binary, bool(qga_sockets))
    guests: dict[int, GuestView] = {}
    for option, specs, read in (
        ("--guest", guest_files, read_guest_agent),
        ("--qga", qga_sockets, None),
    ):
        for spec in specs:
            pid, sep, path = spec.partition("=")
            if not sep or not pid.isdigit():
                raise UsageError(f"{option} takes PID=PATH, not {spec!r}")
            # A guest's RAM bounds what is read from it: by its QEMU's -m, not its word.
            guests[int(pid)] = (
                read(path)
                if read is not None
                else read_guest_qga(
                    path,
                    agent=agent_binary,
                    max_guest_ram=guest_ram_bound(int(pid), MAX_GUEST_RAM),
                )
            )
    return guests


__all__ = ["main"]
