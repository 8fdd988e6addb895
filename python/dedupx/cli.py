"""The `dedupx` command."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from dedupx import __version__
from dedupx.exceptions import DedupxError
from dedupx.parquet_output import write_frames
from dedupx.process_report import process_report
from dedupx.process_scan import ProgressCallback, scan
from dedupx.render import render_process_report

STAGES = {
    "pagemap": "reading page tables",
    "kpageflags": "reading page flags",
    "hash": "hashing pages",
}


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dedupx")
def main() -> None:
    """dedupx: how much memory each process really costs, and which of its pages have
    identical content (and could be merged by KSM, or not).

    Needs root: it reads /proc/PID/pagemap with PFNs, /proc/kpageflags and
    /proc/kpagecount. It only reads: it never faults in, swaps in or writes a page.
    """


@main.command("scan")
@click.option("--pid", "-p", type=int, required=True, help="Process to scan.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--parquet",
    "parquet_dir",
    type=click.Path(file_okay=False),
    help="Also write the vmas, pages and frames frames as Parquet into this new directory.",
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
def scan_cmd(
    pid: int,
    as_json: bool,
    parquet_dir: str | None,
    top: int,
    threads: int,
    quiet: bool,
    proc_root: str,
) -> None:
    """Scan one process: footprint (RSS/PSS/USS), page classes, duplicate contents by kind
    (anon/anon, file/file, anon/file), what KSM can reach and what it misses, the most
    duplicated contents and where they live, and how much was hashed.

    Duplicates are counted over distinct physical pages: a page shared already (including
    the kernel's zero page) costs nothing extra and is not a duplicate.
    """

    def work() -> None:
        started = time.monotonic()
        with progress_bar(not quiet) as update:
            result = scan(pid, threads=threads, progress=update, proc_root=proc_root)
        seconds = time.monotonic() - started
        report = process_report(result, top=top)
        report["seconds"] = round(seconds, 3)
        if parquet_dir:
            write_frames(
                parquet_dir,
                {"vmas": result.vmas, "pages": result.pages, "frames": result.frames},
                {
                    "kind": "process-scan",
                    "dedupx_version": __version__,
                    "pid": pid,
                    "comm": result.comm,
                    "coverage": report["coverage"],
                },
            )
        if as_json:
            click.echo(json.dumps(report, default=str))
        else:
            console = Console()
            render_process_report(report, console)
            console.print(f"Scanned in {seconds:.2f} s on {report['threads']} threads.")
            if parquet_dir:
                console.print(f"Frames written to {parquet_dir}")

    run_guarded(work)


__all__ = ["main"]
