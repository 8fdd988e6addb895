"""`dedupx report` in a real browser: a host snapshot holding two TCG guests and a process
with a hostile name, written as one HTML file that headless Chromium opens with no network
at all; the rendered DOM must hold every chart's marks and every table, the screenshot must
show them, and --png/--svg must write one file per figure."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

import dedupx
from container_kit import FULL, Containers, unavailable
from dedupx.report import js_bundle
from dedupx.report.html import RENDER
from guest_kit import Guest, ensure_packages, guest_assets
from helpers import fixture_spec, rollup, run_cli, start_layout, stop

MIB = 1 << 20
# A process name that is markup: the report must show it as text, never as an element.
HOSTILE = "<img src=x onerror=alert(1)>"
VEGA_BLUE = (76, 120, 168)  # the first colour of Vega's default scheme: a drawn mark
POINTS = 64  # density predicts N = 1 ... 64
CHROMIUM_OFFLINE = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--no-proxy-server",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--hide-scrollbars",
    "--virtual-time-budget=20000",  # until vega-embed's promises have drawn every chart
)


@dataclass
class Capture:
    snap: Path
    guests: list[int]
    guest_rss: dict[int, int]
    layout_pid: int
    pid_report: Path
    containers: int  # how many the test started (0 where this host cannot make them)


@dataclass
class Table:
    caption: str = ""
    rows: list[list[str]] = field(default_factory=list)


class Dom(HTMLParser):
    """What a page holds: per chart <div>, its marks by role description; per table class,
    its tables (caption, rows of cell text); every element's tag and attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[str, Counter[str]] = {}
        self.tables: dict[str, list[Table]] = {}
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str]] = []
        self.paragraphs: list[str] = []
        self._chart: str | None = None
        self._depth = 0
        self._table: Table | None = None
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags[tag] += 1
        self.attrs += list(a.items())
        if tag == "div":
            if self._chart is not None:
                self._depth += 1
            elif "chart" in a.get("class", "").split():
                self._chart, self._depth = a["id"].removeprefix("chart-"), 0
                self.marks[self._chart] = Counter()
        if self._chart is not None and a.get("role") == "graphics-symbol":
            self.marks[self._chart][a.get("aria-roledescription", "")] += 1
        if tag == "table":
            self._table = Table()
            self.tables.setdefault(a.get("class", ""), []).append(self._table)
        elif tag == "tr" and self._table is not None:
            self._table.rows.append([])
        elif tag in ("td", "th", "caption", "p"):
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._chart is not None:
            if self._depth == 0:
                self._chart = None
            else:
                self._depth -= 1
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th", "caption", "p") and self._text is not None:
            text = "".join(self._text).strip()
            self._text = None
            if tag == "p":
                self.paragraphs.append(text)
            elif tag == "caption" and self._table is not None:
                self._table.caption = text
            elif self._table is not None:
                self._table.rows[-1].append(text)

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)


def near(c: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return all(abs(a - b) < 8 for a, b in zip(c, want, strict=True))


def number(cell: str) -> float:
    return float(cell.replace(",", ""))


def parse(text: str) -> Dom:
    dom = Dom()
    dom.feed(text)
    return dom


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory, page_layout_bin: Path) -> Capture:
    """Two identical guests (stopped, so their memory holds still) and the layout process
    under a hostile name, in one host snapshot; and a report of the layout process by PID."""
    ensure_packages()
    assets = guest_assets(variant="a")
    tmp = tmp_path_factory.mktemp("report")
    binary = tmp / HOSTILE
    shutil.copy(page_layout_bin, binary)
    lp = start_layout(binary, tmp / "layout", fixture_spec(), zeroread=3)
    try:
        with (
            Guest(assets, mem_mib=256, name="rep1", workdir=tmp) as g1,
            Guest(assets, mem_mib=256, name="rep2", workdir=tmp) as g2,
            Containers(tmp / "containers") as kit,
        ):
            g1.stop()
            g2.stop()
            started = 0
            if unavailable() is None:  # two full containers on one shared root
                for name in ("c1", "c2"):
                    kit.start(name, FULL, root=kit.shared_root())
                    started += 1
            snap = dedupx.snapshot(tmp / "snap")
            rss = {g.pid: rollup(g.pid)["Rss"] for g in (g1, g2)}
            pids = [g1.pid, g2.pid]
        pid_report = tmp / "pid.html"
        res = run_cli("report", str(lp.pid), "-o", str(pid_report), "-q")
        assert res.returncode == 0, res.stderr
        return Capture(Path(snap), pids, rss, lp.pid, pid_report, started)
    finally:
        stop(lp.proc)


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chromium", *CHROMIUM_OFFLINE, *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


def test_report_renders_offline(capture: Capture, tmp_path: Path) -> None:
    out, png, svg = tmp_path / "report.html", tmp_path / "png", tmp_path / "svg"
    res = run_cli(
        "report", str(capture.snap), "-o", str(out), "--png", str(png), "--svg", str(svg),
        "--top", "1000", "-q",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr

    # Self-contained: nothing in the file names anything to fetch.
    source = parse(out.read_text())
    assert not [(k, v) for k, v in source.attrs if k in ("src", "href")]
    assert source.tags["script"] >= 2

    dom = parse(chromium("--dump-dom", out.as_uri()).stdout)
    # The hostile name is text in the process table, never an element.
    assert dom.tags["img"] == 0
    procs = {int(r[0]): r for r in dom.tables["processes"][0].rows[1:]}
    assert procs[capture.layout_pid][1] == HOSTILE[:15]  # comm: the kernel keeps 15 bytes

    # Every figure drew its marks: one line and 64 points per policy; a bar per part of
    # each VM's cost; 9 cells (3 rows x 3 kinds) and their labels per matrix; top bars.
    charts = dom.marks
    assert not [p for p in dom.paragraphs if "could not be drawn" in p]
    assert charts["density-vm"]["line mark"] == 3
    assert charts["cost"]["bar"] >= 2 * len(capture.guests)  # QEMU's own + RAM, each VM
    assert charts["density-vm"]["point"] == 3 * POINTS
    for pid in capture.guests:
        assert charts[f"matrix-vm-{pid}"]["rect mark"] == 9
        assert charts[f"matrix-vm-{pid}"]["text mark"] == 9
    assert 1 <= charts["top-duplicates"]["bar"] <= 20
    if capture.containers:
        assert charts["density-container"]["line mark"] == 3
        assert charts["density-container"]["point"] == 3 * POINTS
        matrices = [m for name, m in charts.items() if name.startswith("matrix-container-")]
        assert len(matrices) >= capture.containers
        assert all(m["rect mark"] == 9 and m["text mark"] == 9 for m in matrices)

    # Every table, and numbers the kernel gives independently: each guest's RSS.
    for cls in (
        "groups",
        "processes",
        "matrix",
        "matrix-ksm",
        "cost",
        "devices",
        "duplicates",
        "ksm",
    ):
        assert all(len(t.rows) > 1 for t in dom.tables[cls]), cls
    assert {"top", "density"} <= dom.tables.keys()
    groups = {r[0]: r for r in dom.tables["groups"][0].rows[1:]}
    for pid, rss in capture.guest_rss.items():
        row = next(r for label, r in groups.items() if label.startswith(f"vm {pid} "))
        assert abs(number(row[2]) - rss / MIB) <= 0.051, (pid, row, rss)
        # Two guests from one kernel and initramfs share thousands of pages (as in
        # test_dedup_matrix): more than 10 MiB in the VM-VM row of each one's matrix.
        matrix = next(t for t in dom.tables["matrix"] if t.caption.startswith(f"VM {pid} "))
        vm_vm = next(r for r in matrix.rows if r[0] == "with other VMs")
        assert number(vm_vm[4]) > 10, matrix
    assert any(p.startswith("Coverage: ") for p in dom.paragraphs)

    # A screenshot shows the figures: not blank, and Vega's first colour is on it.
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,3000", out.as_uri())
    pixels = Image.open(shot).convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 20)
    assert colours is not None
    non_white = sum(n for n, c in colours if c != (255, 255, 255))
    assert non_white > 0.02 * pixels.width * pixels.height
    vega_blue = sum(n for n, c in colours if near(c, VEGA_BLUE))
    assert vega_blue > 500

    # --png and --svg: one file per figure, each a real image of the chart.
    names = set(charts)
    assert {p.stem for p in png.glob("*.png")} == names
    assert {p.stem for p in svg.glob("*.svg")} == names
    for p in png.glob("*.png"):
        with Image.open(p) as im:
            assert im.width > 100 and im.height > 50, p
    for p in svg.glob("*.svg"):
        marks = [e for e in ET.parse(p).iter() if e.get("role") == "graphics-symbol"]
        assert marks, p


def test_report_of_a_pid(capture: Capture) -> None:
    """A PID is scanned live: its report holds its footprint, escaped, and no VM section."""
    dom = parse(capture.pid_report.read_text())
    assert dom.tags["img"] == 0
    procs = {int(r[0]): r for r in dom.tables["processes"][0].rows[1:]}
    assert procs[capture.layout_pid][1] == HOSTILE[:15]
    assert "matrix" not in dom.tables
    assert "top-duplicates" in dom.marks  # the chart's <div> (drawn by the browser)


def test_report_needs_an_output(capture: Capture) -> None:
    res = run_cli("report", str(capture.snap))
    assert res.returncode == 2 and "give -o" in res.stderr


def test_bundle_is_built_once_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inlined JavaScript comes from the cache once built: the same text, without
    calling vl-convert again; a cache that cannot be written costs only the time."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = js_bundle.javascript_bundle(RENDER)
    (cached,) = (tmp_path / "dedupx").glob("vega-bundle-*.js")
    assert cached.read_text() == first and "vega" in first
    with monkeypatch.context() as m:

        def no_call(snippet: str) -> str:
            raise AssertionError("vl-convert called although the bundle is cached")

        m.setattr(js_bundle.vl_convert, "javascript_bundle", no_call)
        assert js_bundle.javascript_bundle(RENDER) == first
    (tmp_path / "file").touch()  # where the cache directory would have to be
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    assert js_bundle.javascript_bundle(RENDER) == first
