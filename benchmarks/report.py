"""The proxy benchmark's figures as markdown, the targets they are held to, BENCHMARKS.md."""

from __future__ import annotations

import datetime
import math
import os
import platform
import subprocess
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from harness import nginx_version

SECTION = "## Proxy vs direct vs nginx"
# Wrapped by hand: a command is never split across lines.
RUN = """Run: `make bench` (every figure, a few minutes). To check a change in well under a minute:
`python benchmarks/bench_proxy.py --quick` (one round, tiny counts); `--only requests`
(repeatable) picks figures, `--lanes baseline,seed` the lanes besides direct and the proxy;
`--no-nginx`, `--no-uvloop` and `--no-seed` leave one out. The seed stack lane needs the bench
extra, which `make bench` installs."""
_READING = (
    "- *As fast as they go*: the upstream writes every chunk at once, so a saturated process "
    "reads several events per socket read; that row is throughput at saturation, where "
    "batching hides the per-read cost. *Paced* (every stream one chunk per 5 ms, as an "
    "engine emits tokens) is one event per read: the per-event cost.",
    "- *Opened at once*: 500 requests reach the process in the same instant and the last waits "
    "while the 499 before it are forwarded, so that TTFT follows CPU per request. *Opened over "
    "1 s*: 500 arrivals a second, all 500 streams open at the peak, each then paced.",
    "- At c16 the process under test is saturated (closed loop): added p50 ≈ 16 x CPU per "
    "request there.",
)
_LOADS = {
    "wrk": "Debian's wrk (one thread, Lua POST body)",
    "python": "benchmarks/load_client.py (aiohttp client)",
}
_LANES = (("proxy", "metrics_proxy"), ("baseline", "bare aiohttp"), ("nginx", "nginx"))
_SEED = (
    "- *Seed stack*: benchmarks/seed_stack_proxy.py, the user's original tool (FastAPI, uvicorn, "
    "httpx.AsyncClient, prometheus-client) doing the same job for /v1/chat/completions. It runs "
    "the non-streaming figures only: at its pace, paced or held streams through it would measure "
    "its queue, not its cost per chunk. It gets a quarter of the c16 requests (the same wrk "
    "load, its rate read over its own steady window)."
)


@dataclass(frozen=True)
class Figure:
    """One figure measured on several lanes; ``direct`` is direct's own absolute value, when the
    lane values are what each adds to it."""

    key: str
    name: str
    unit: str
    values: dict[str, float]
    direct: float | None = None

    def ratio(self, lane: str) -> str:
        """The proxy's value over the lane's. An added latency under 0.1 ms is within the
        noise, so no ratio is made of it."""
        reference = self.values.get(lane)
        if self.direct is not None and (reference is None or reference < 0.1):
            return "—"
        return ratio(self.values.get("proxy"), reference)


@dataclass(frozen=True)
class Proportion:
    """A figure of the proxy alone, next to the same proxy measured another way."""

    name: str
    value: float
    unit: str
    versus: str
    reference: float | None


@dataclass(frozen=True)
class Target:
    text: str
    figure: str
    lane: str
    versus: str | None  # compare to this lane's value (a ratio); None: an absolute limit
    limit: float
    at_least: bool = False  # the figure must reach the limit (a throughput), not stay within it


TARGETS = (
    Target("CPU per request ≤ 1.2x bare aiohttp", "cpu_request", "proxy", "baseline", 1.2),
    Target("CPU per request ≤ 4x nginx", "cpu_request", "proxy", "nginx", 4.0),
    Target("CPU per streamed chunk ≤ 1.5x nginx", "cpu_chunk", "proxy", "nginx", 1.5),
    Target("(the same, paced streams)", "cpu_chunk_paced", "proxy", "nginx", 1.5),
    Target("added p50 latency at concurrency 1 ≤ 0.3 ms", "added_p50_c1", "proxy", None, 0.3),
    Target("added TTFT p99 at 500 streams ≤ 5 ms", "added_ttft_p99", "proxy", None, 5.0),
    Target("(the same, streams opened over 1 s)", "added_ttft_p99_spread", "proxy", None, 5.0),
    Target("RSS per held stream ≤ 40 KB", "rss_stream", "proxy", None, 40.0),
    Target("requests/s ≥ 10x the seed stack's (c16)", "requests_c16", "proxy", "seed", 10.0, True),
)  # fmt: skip


def number(value: float | None, unit: str = "") -> str:
    if value is None or math.isnan(value):
        return "—"
    size = abs(value)
    text = f"{value:.0f}" if size >= 100 else f"{value:.1f}" if size >= 10 else f"{value:.2f}"
    return f"{text} {unit}".rstrip()


def ratio(value: float | None, reference: float | None) -> str:
    """value ÷ reference; "—" unless both are positive (an added latency can be noise)."""
    if value is None or reference is None or math.isnan(value) or math.isnan(reference):
        return "—"
    if value <= 0 or reference <= 0:
        return "—"
    return f"{value / reference:.2f}x"


@dataclass
class Report:
    figures: dict[str, Figure] = field(default_factory=dict)
    proportions: list[Proportion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)  # lane -> why it did not run
    seed_stack: str = ""  # the seed stack's packages and versions, when it ran

    def add(self, figure: Figure) -> None:
        self.figures[figure.key] = figure

    def alone(self, proportion: Proportion) -> None:
        self.proportions.append(proportion)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def targets(self) -> list[str]:
        lines = []
        for target in TARGETS:
            figure = self.figures.get(target.figure)
            value = None if figure is None else figure.values.get(target.lane)
            reference = None
            if figure is not None and target.versus is not None:
                reference = figure.values.get(target.versus)
            if value is None or math.isnan(value):
                lines.append(f"- n/a  {target.text} (not measured in this run)")
                continue
            if target.versus is not None and reference is None:
                why = self.absent.get(target.versus, "not run")
                lines.append(f"- n/a  {target.text} ({_lane_name(target.versus)}: {why})")
                continue
            if target.versus is None:
                measured, shown = value, number(value, figure.unit if figure else "")
                if measured < 0:
                    # "Added" below zero: direct's own spread in that round exceeded what the
                    # lane adds, so the round says nothing either way.
                    lines.append(f"- NOISE {target.text}: {shown} (direct varied more)")
                    continue
            elif reference is None or math.isnan(reference) or reference <= 0:
                lines.append(f"- n/a  {target.text} ({target.versus}: not measured or 0)")
                continue
            else:
                measured, shown = value / reference, ratio(value, reference)
            met = measured >= target.limit if target.at_least else measured <= target.limit
            verdict = "PASS" if met else "MISS"
            lines.append(f"- {verdict} {target.text}: {shown}")
        return lines

    def tables(self) -> list[str]:
        lines = [
            "| figure | " + " | ".join(label for _, label in _LANES) + " | direct "
            "| proxy ÷ bare | proxy ÷ nginx |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for figure in self.figures.values():
            cells = [number(figure.values.get(lane), figure.unit) for lane, _ in _LANES]
            lines.append(
                f"| {figure.name} | "
                + " | ".join(cells)
                + f" | {number(figure.direct, figure.unit)} | "
                + f"{figure.ratio('baseline')} | {figure.ratio('nginx')} |"
            )
        lines += self.seed_table()
        if self.proportions:
            lines += [
                "",
                "| the proxy alone | value | compared with | ratio |",
                "| --- | --- | --- | --- |",
            ]
            for item in self.proportions:
                versus = (
                    f"{item.versus}: {number(item.reference, item.unit)}" if item.versus else "—"
                )
                lines.append(
                    f"| {item.name} | {number(item.value, item.unit)} | {versus} "
                    f"| {ratio(item.value, item.reference)} |"
                )
        return lines

    def seed_table(self) -> list[str]:
        """The figures the seed stack ran, next to the proxy's, or why it did not run."""
        if "seed" in self.absent:
            return ["", f"The seed stack did not run: {self.absent['seed']}."]
        figures = [figure for figure in self.figures.values() if "seed" in figure.values]
        if not figures:
            return []
        lines = [
            "",
            "| figure | metrics_proxy | seed stack | proxy ÷ seed stack |",
            "| --- | --- | --- | --- |",
        ]
        for figure in figures:
            proxy, seed = (number(figure.values.get(k), figure.unit) for k in ("proxy", "seed"))
            lines.append(f"| {figure.name} | {proxy} | {seed} | {figure.ratio('seed')} |")
        return lines

    def render(
        self, *, command: str, seconds: float, load: str, pinning: str, nginx: bool, quick: bool
    ) -> str:
        cpu = _cpu_model()
        tools = [f"aiohttp {aiohttp.__version__}"]
        tools.append(f"nginx {nginx_version()}" if nginx else "nginx not run")
        if load == "wrk":
            tools.append(_wrk_version())
        prose = [
            f"Command: `{command}` (part of `make bench`); it took {seconds:.0f} s.",
            f"Machine: nproc {os.cpu_count()}, {cpu}, {platform.python_implementation()} "
            f"{platform.python_version()}, {', '.join(tools)}. "
            f"{datetime.date.today().isoformat()}.",
            f"Load: {_LOADS[load]} in its own process; TTFT, held streams and GETs always use "
            f"load_client.py. {pinning.capitalize()}. "
            "Upstream: benchmarks/fast_upstream.py (raw asyncio, one event per chunked frame). "
            'Each figure is the median over interleaved rounds; "added" is the lane minus direct '
            "measured in the same round; the direct column is direct's own value. "
            "CPU is user+sys from /proc/<pid>/stat of the process in the middle (nginx: master "
            "and worker), read over a steady-state window of the run; CPU per chunk is CPU per "
            "stream ÷ content chunks.",
        ]
        if self.seed_stack:
            prose[2] += f" Seed stack: {self.seed_stack}."
        lines = [SECTION, "", RUN, "", prose[0], _wrap(prose[1]), "", _wrap(prose[2])]
        if quick:
            lines += ["", "**Quick run: tiny counts, not figures to quote.**"]
        lines += ["", *self.tables(), "", "Targets:", "", *self.targets()]
        reading = [*_READING, _SEED] if self.seed_stack else _READING
        lines += ["", "Reading it:", "", *(_wrap(item, "  ") for item in reading)]
        if self.notes:
            lines += ["", "Notes:", "", *(f"- {note}" for note in self.notes)]
        return "\n".join(lines) + "\n"

    @staticmethod
    def write(path: Path, section: str, title: str = SECTION) -> None:
        """Replace the section headed ``title`` of BENCHMARKS.md (or append it), keeping the
        rest."""
        text = path.read_text()
        start = text.find("\n" + title + "\n")
        if start < 0:
            path.write_text(text.rstrip("\n") + "\n\n" + section)
            return
        after = text.find("\n## ", start + 1)
        tail = "" if after < 0 else "\n" + text[after + 1 :]
        path.write_text(text[:start].rstrip("\n") + "\n\n" + section + tail)


def _lane_name(lane: str) -> str:
    return dict(_LANES).get(lane, "seed stack" if lane == "seed" else lane)


def _wrap(text: str, indent: str = "") -> str:
    return textwrap.fill(text, 100, subsequent_indent=indent, break_on_hyphens=False)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10, check=False)
    words = (out.stdout or out.stderr).split()
    return f"wrk {words[1]}" if len(words) > 1 else "wrk"
