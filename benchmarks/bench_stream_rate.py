"""Engine-rate streaming: C streams, one chunk to each every engine step, through each lane.

An engine-shaped upstream (benchmarks/engine_upstream.py) sends, every step (10 ms), one SSE
chunk to EACH of C open streams at once, each stamped with its send time; a client process
(benchmarks/stream_client.py) opens the C streams through the lane under test and records, per
chunk, receive time minus send time. Offered rate = C / step. Lanes, side by side in one run:
direct, metrics_proxy (``python -m metrics_proxy``, default settings: usage asked upstream and
stripped), bare aiohttp (baseline_proxy.py) and nginx (proxy_buffering off).

The proxy's own inter-token latency and TTFT (its /internal/metrics) are held against the
engine's step and the client's TTFT in a steady state: C streams kept open with churn, each a
bounded number of steps, starts staggered evenly (stream_client.py --churn); and, labelled as
such, over the streams opened at once. The issue's targets are printed PASS or MISS.

Run: python benchmarks/bench_stream_rate.py [--quick] [--lanes LANE,...] [--no-nginx]
                                            [--svg PATH] [--write]
--quick is a check in well under a minute: one round, 1k and 30k chunks/s, short windows, the
steady state at 20k; --lanes picks lanes besides direct (proxy, baseline, nginx,
proxy_uvloop: that one runs by default wherever uvloop is installed);
--svg writes the saturation curve (default benchmarks/stream_rate.svg, a generated file);
--write replaces the "Engine-rate streaming" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import own_figures
from harness import (
    BENCH,
    Child,
    LineReader,
    Loader,
    ProxyLane,
    Servers,
    cpu_seconds,
    nginx_version,
)
from own_figures import Own
from report import Report, _cpu_model, _wrap, number
from stream_client import proxy_delta
from svg_chart import Panel, line_chart

SECTION = "## Engine-rate streaming"
# Wrapped by hand: a command is never split across lines.
RUN = """Run: `make bench` (three rounds, a few minutes). To check a change in well under a minute:
`python benchmarks/bench_stream_rate.py --quick` (one round, 1k and 30k chunks/s, short windows,
the steady state at 20k; its curve goes to the untracked benchmarks/stream_rate.svg);
`--lanes proxy` runs direct and the proxy alone, `--no-nginx` leaves nginx out."""
CARRY_P99_MS = 5.0
LANES = (
    "direct",
    "proxy",
    "baseline",
    "nginx",
    "proxy_uvloop",
    "proxy_no_read_timeout",
    "proxy_checkout",
)
LABELS = {
    "direct": "direct",
    "proxy": "metrics_proxy",
    "baseline": "bare aiohttp",
    "nginx": "nginx",
    "proxy_uvloop": "metrics_proxy on uvloop",
    "proxy_no_read_timeout": "metrics_proxy, --read-timeout 0",
    "proxy_checkout": "metrics_proxy, other checkout",
}
# Lanes that run only when asked for (--lanes, --compare-checkout).
_ON_REQUEST = {"proxy_no_read_timeout", "proxy_checkout"}


@dataclass(frozen=True)
class Plan:
    interval_ms: float  # the engine step
    streams: tuple[int, ...]  # C per offered rate; rate = C / step
    ramp: float  # seconds after every stream's first chunk before the window opens
    window: float  # the steady-state window: latency and CPU are read over it
    seconds: float  # bound on each client run
    report_streams: int  # the rate at which the proxy's own figures are read
    warm_up: bool
    rounds: int  # interleaved repetitions; a figure is the median over rounds
    margin: float  # seconds of chunks past the window: the time C streams take to open
    churn_steps: int  # steady state: each stream's length in steps (its max steps)


FULL = Plan(10.0, (50, 100, 200, 300), 0.5, 3.0, 60.0, 200, True, 3, 1.5, 100)
# One round, the lowest rate and the highest, short windows; the steady state at 20k/s.
QUICK = Plan(10.0, (10, 300), 0.1, 0.5, 20.0, 200, False, 1, 1.5, 100)


@dataclass
class Measured:
    lane: str
    streams: int
    offered: float  # chunks/s
    delivered: float  # chunks/s received in the window
    p50: float  # seconds, receive minus send
    p99: float
    cpu_per_chunk: float | None  # seconds of the process under test
    ttft_mean: float  # client-measured, seconds
    errors: int
    round: int = 0


def chunks_per_stream(plan: Plan) -> int:
    """Long enough that every stream is still open at the end of the window (with margin
    for the ramp-up of opening C streams)."""
    return math.ceil((plan.ramp + plan.window + plan.margin) * 1000 / plan.interval_ms)


class StreamRate:
    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.plan = QUICK if args.quick else FULL
        upstream = [str(BENCH / "engine_upstream.py"), "--interval-ms", str(self.plan.interval_ms)]
        # The proxy as a user starts it: default settings.
        proxies = {
            "proxy": ProxyLane(),
            "proxy_uvloop": ProxyLane(uvloop=True),
            "proxy_no_read_timeout": ProxyLane(flags=("--read-timeout", "0")),
            "proxy_checkout": ProxyLane(checkout=args.compare_checkout),
        }
        self.servers = Servers(directory, upstream, proxies)
        self.pinning = self.servers.pinning
        self.loader = Loader("python", directory, self.servers.load_cpus)
        self.nginx = args.nginx and shutil.which("nginx") is not None
        # Direct always runs: every "added" figure is a lane minus direct.
        default = [lane for lane in LANES if lane not in _ON_REQUEST]
        chosen = {"direct", *(default if args.lanes is None else args.lanes)}
        if args.compare_checkout is not None:
            chosen.add("proxy_checkout")
        # uvloop is measured where it is installed (`pip install uvloop`): is it worth an extra?
        has_uvloop = importlib.util.find_spec("uvloop") is not None
        self.lanes = [
            lane
            for lane in LANES
            if lane in chosen
            and (lane != "nginx" or self.nginx)
            and (lane != "proxy_uvloop" or has_uvloop)
            and (lane != "proxy_checkout" or args.compare_checkout is not None)
        ]
        self.nginx = "nginx" in self.lanes
        self.notes: list[str] = []

    def stack(self) -> AbstractContextManager[dict[str, Child]]:
        """The engine upstream (load cores) and each lane's server (the measured core)."""
        return self.servers.stack(self.lanes)

    def run_once(self, lane: str, child: Child, streams: int) -> tuple[Measured, dict[str, Any]]:
        """C streams opened at once; latency and CPU over the steady window."""
        extra = ["--chunks", str(chunks_per_stream(self.plan))]
        result, cpu = self.drive(lane, child, streams, extra)
        chunks = result["window_chunks"]
        window = result["window_s"] or float("nan")
        measured = Measured(
            lane,
            streams,
            self.offered(streams),
            chunks / window if chunks else 0.0,
            result["p50"],
            result["p99"],
            None if lane == "direct" or cpu is None or not chunks else cpu / chunks,
            result["ttft_mean"],
            result["errors"],
        )
        return measured, result

    def run_steady(self, lane: str, child: Child, streams: int) -> dict[str, Any]:
        """C streams kept open with churn; the proxy read at the window's two marks."""
        extra = ["--chunks", str(self.plan.churn_steps), "--churn"]
        if lane == "proxy":
            extra.append("--scrape")
        return self.drive(lane, child, streams, extra)[0]

    def offered(self, streams: int) -> float:
        return streams * 1000 / self.plan.interval_ms

    def drive(
        self, lane: str, child: Child, streams: int, extra: list[str]
    ) -> tuple[dict[str, Any], float | None]:
        """One stream_client.py run: READY, the ramp, the window between its BEGIN and END
        marks; its RESULT and the CPU seconds of ``child`` over the window."""
        plan = self.plan
        argv = [sys.executable, str(BENCH / "stream_client.py"), child.url + "/v1/chat/completions"]
        argv += ["--streams", str(streams), "--interval-ms", str(plan.interval_ms)]
        argv += ["--seconds", str(plan.seconds), *extra]
        process = self.loader.popen(argv)
        where = f"{lane} at {self.offered(streams):,.0f} chunks/s"
        cpu: float | None = None
        try:
            reader = LineReader(process)
            try:
                reader.wait_for("READY", plan.seconds)
            except RuntimeError:
                self.notes.append(f"{where}: streams never all began")
            else:
                time.sleep(plan.ramp)
                before = mark(process, reader, "BEGIN", child)
                time.sleep(plan.window)
                cpu = mark(process, reader, "END", child) - before
            out = reader.rest() + process.communicate(timeout=plan.seconds + 30)[0]
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        result = last_result(out)
        if result["errors"] or result["cut"]:
            self.notes.append(
                f"{where}: {result['errors']} streams failed, {result['cut']} cut at the time bound"
            )
        return result, cpu


def mark(process: subprocess.Popen[str], reader: LineReader, word: str, child: Child) -> float:
    """Tell the client to mark the window (BEGIN or END); once it has, the CPU seconds of
    the process under test."""
    assert process.stdin is not None
    process.stdin.write(word + "\n")
    process.stdin.flush()
    reader.wait_for("BEGUN" if word == "BEGIN" else "ENDED", 30)
    return cpu_seconds(child.pid)


def last_result(out: str) -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"stream_client printed no result: {out[-2000:]}")


def snapshot(url: str) -> bytes:
    """The proxy's /internal/metrics."""
    with urllib.request.urlopen(url + "/internal/metrics", timeout=10) as response:
        body: bytes = response.read()
        return body


@dataclass
class Readings:
    raw: list[Measured]  # every at-once client run, rounds interleaved
    steady: Own  # the proxy's own figures, streams kept open with churn
    at_once: Own  # the same over the at-once runs at the report rate


def run(bench: StreamRate) -> Readings:
    """Every client run, rounds interleaved (each round: every rate, every lane, then the
    steady state at the report rate), and the proxy's own ITL and TTFT."""
    plan = bench.plan
    readings = Readings([], Own("steady state"), Own("at once"))
    with bench.stack() as servers:
        for lane in bench.lanes if plan.warm_up else ():  # connections, code paths
            bench.run_once(lane, servers[lane], 20)
        bench.notes.clear()  # warm-up notes are not figures
        for index in range(plan.rounds):
            for streams in plan.streams:
                for lane in bench.lanes:
                    progress(index, lane, f"{streams} streams at once")
                    measured = sweep_one(bench, lane, servers[lane], streams, readings.at_once)
                    measured.round = index
                    readings.raw.append(measured)
            if "proxy" in servers:
                for lane in ("direct", "proxy"):
                    progress(index, lane, f"{plan.report_streams} streams kept open")
                    result = bench.run_steady(lane, servers[lane], plan.report_streams)
                    if lane == "direct":
                        readings.steady.add_direct(result)
                    elif "proxy" in result:
                        readings.steady.add(result, result["proxy"], window=True)
                    else:
                        bench.notes.append(f"steady state: {result.get('proxy_error')}")
    return readings


def progress(index: int, lane: str, what: str) -> None:
    print(f"# round {index + 1}: {lane}, {what} ...", file=sys.stderr, flush=True)


def sweep_one(bench: StreamRate, lane: str, child: Child, streams: int, at_once: Own) -> Measured:
    """One at-once run; through the proxy at the report rate, its own figures read around it."""
    reading = lane == "proxy" and streams == bench.plan.report_streams
    before = snapshot(child.url) if reading else b""
    measured, result = bench.run_once(lane, child, streams)
    if reading:
        at_once.add(result, proxy_delta(before, snapshot(child.url)), window=False)
    return measured


Added = dict[tuple[str, int], tuple[float, float]]


def combine(raw: list[Measured]) -> tuple[list[Measured], Added]:
    """Medians over rounds per (lane, streams), and (lane, streams) -> added (p50, p99) in
    seconds: the median over rounds of the lane minus direct at that rate in the same round."""
    groups: dict[tuple[str, int], list[Measured]] = {}
    for m in raw:
        groups.setdefault((m.lane, m.streams), []).append(m)
    direct = {(m.streams, m.round): m for m in raw if m.lane == "direct"}
    results, extra = [], {}
    for (lane, streams), runs in groups.items():
        cpu = [m.cpu_per_chunk for m in runs if m.cpu_per_chunk is not None]
        results.append(
            Measured(
                lane,
                streams,
                runs[0].offered,
                statistics.median(m.delivered for m in runs),
                statistics.median(m.p50 for m in runs),
                statistics.median(m.p99 for m in runs),
                statistics.median(cpu) if cpu else None,
                statistics.median(m.ttft_mean for m in runs),
                sum(m.errors for m in runs),
            )
        )
        pairs = [(m, direct[(streams, m.round)]) for m in runs if (streams, m.round) in direct]
        if lane != "direct" and pairs:
            extra[(lane, streams)] = (
                statistics.median(m.p50 - d.p50 for m, d in pairs),
                statistics.median(m.p99 - d.p99 for m, d in pairs),
            )
    return results, extra


def carried(m: Measured, extra: tuple[float, float] | None) -> bool:
    delivered = m.delivered >= 0.95 * m.offered and not m.errors
    within = extra is not None and extra[1] * 1e3 <= CARRY_P99_MS
    return delivered and (m.lane == "direct" or within)


def svg(results: list[Measured], extra: Added, bench: StreamRate) -> str:
    panels = []
    for index, name in enumerate(("added p50", "added p99")):
        series = {}
        for lane in bench.lanes[1:]:
            points = [
                (m.offered / 1000, extra[(lane, m.streams)][index] * 1e3)
                for m in results
                if m.lane == lane
            ]
            series[LABELS[lane]] = points
        panels.append(Panel(name, series, CARRY_P99_MS if index else None))
    return line_chart(
        panels,
        x_label="offered rate (thousand chunks/s)",
        y_label="added latency (ms)",
        title=f"Engine-rate streaming: one chunk per stream every {bench.plan.interval_ms:g} ms",
        y_cap=20.0,
    )


def render(
    results: list[Measured],
    extra: Added,
    readings: Readings,
    bench: StreamRate,
    *,
    command: str,
    seconds: float,
    quick: bool,
    figure: str | None,
) -> str:
    plan = bench.plan
    tools = [f"aiohttp {aiohttp.__version__}"]
    tools.append(f"nginx {nginx_version()}" if bench.nginx else "nginx not run")
    lines = [
        SECTION,
        "",
        RUN,
        "",
        f"Command: `{command}` (part of `make bench`); it took {seconds:.0f} s.",
        _wrap(
            f"Machine: nproc {os.cpu_count()}, {_cpu_model()}, "
            f"{platform.python_implementation()} {platform.python_version()}, "
            f"{', '.join(tools)}. {time.strftime('%Y-%m-%d')}."
        ),
        "",
        _wrap(
            f"Upstream: benchmarks/engine_upstream.py, one step every {plan.interval_ms:g} ms, "
            "each step one chat chunk to every open stream, stamped with its send time "
            "(CLOCK_MONOTONIC) in its content text. Client: benchmarks/stream_client.py (raw "
            "asyncio) opens the C streams at once through the lane. Latency is receive minus "
            f"send per chunk, over a {plan.window:g} s steady-state window "
            f"({plan.ramp:g} s after every stream had its first chunk); added = the lane "
            "minus direct at the same rate in the same round. Each figure is the median over "
            f"{plan.rounds} interleaved round(s). CPU per chunk: user+sys "
            "of the process under test from /proc over the same window, over chunks received "
            f"in it. {bench.pinning.capitalize()}. Carried: at least 95% of the offered rate "
            f"delivered in the window, no failed stream, added p99 ≤ {CARRY_P99_MS:g} ms. "
            "An added latency below zero is direct's own spread (upstream and client share "
            "a core), not a lane faster than direct; the curve draws it at 0."
        ),
    ]
    if quick:
        lines += ["", "**Quick run: tiny counts, not figures to quote.**"]
    lines += [
        "",
        "| offered | lane | delivered | p50 | p99 | added p50 | added p99 "
        "| CPU per chunk | carried |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in results:
        more = extra.get((m.lane, m.streams))
        cpu = None if m.cpu_per_chunk is None else m.cpu_per_chunk * 1e6
        lines.append(
            f"| {m.offered / 1000:g}k/s (C={m.streams}) | {LABELS[m.lane]} "
            f"| {m.delivered / 1000:.1f}k/s | {number(m.p50 * 1e3, 'ms')} "
            f"| {number(m.p99 * 1e3, 'ms')} "
            f"| {'—' if more is None else number(more[0] * 1e3, 'ms')} "
            f"| {'—' if more is None else number(more[1] * 1e3, 'ms')} "
            f"| {number(cpu, 'µs')} | {'yes' if carried(m, more) else 'NO'} |"
        )
    lines += own_section(readings, plan)
    lines += ["", "Targets:", "", *targets(results, extra, readings, plan)]
    if figure:
        lines += ["", f"![added latency vs offered rate]({figure})"]
    if bench.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in bench.notes)]
    return "\n".join(lines) + "\n"


def own_section(readings: Readings, plan: Plan) -> list[str]:
    steady, at_once = readings.steady, readings.at_once
    if not (steady.runs or at_once.runs):
        return []
    streams, steps = plan.report_streams, plan.churn_steps
    text = (
        f"The proxy's own figures at {streams * 1000 / plan.interval_ms / 1000:g}k chunks/s "
        f"(C={streams}), from its /internal/metrics: raw _sum/_count deltas, not bucket "
        f"percentiles, summed over {plan.rounds} round(s). *Steady state*: C streams kept open "
        f"with churn, each {steps} steps long, their starts staggered evenly "
        f"({streams / steps:g} a step; as a stream ends its slot sends the next request on the "
        f"same connection), read over the requests sent in a {plan.window:g} s window. The "
        "proxy's metrics are read at both ends of it at a moment when no request awaits its "
        "first chunk (new requests wait for that, a step or so), so the proxy and the client "
        "count the same requests. *At once*: the C streams of the sweep above, opened in one "
        "instant, over all of them: the last waits in the proxy's loop while those before it "
        "are forwarded, queueing that is real but not the steady state an engine sees. The "
        "client's TTFT runs from just before it writes its request to its first content chunk; "
        "the engine's step is the one it kept (the mean interval between a stream's stamps)."
    )
    lines = ["", _wrap(text), "", *own_figures.HEADER]
    for own in (steady, at_once):
        if own.runs:
            lines += own.rows(plan.interval_ms)
    return lines


def targets(results: list[Measured], extra: Added, readings: Readings, plan: Plan) -> list[str]:
    """Issue 12's target lines, each PASS or MISS with its figure."""
    top = max(plan.streams)
    at = {m.lane: m for m in results if m.streams == top}
    rate = f"{top * 1000 / plan.interval_ms / 1000:g}k chunks/s"
    lines = []
    proxy, nginx = at.get("proxy"), at.get("nginx")
    if proxy is None:
        lines.append(f"- n/a  the proxy carries {rate} (the proxy lane did not run)")
    else:
        more = extra.get(("proxy", top))
        shown = f"{proxy.delivered / 1000:.1f}k/s delivered, added p99 "
        shown += "—" if more is None else number(more[1] * 1e3, "ms")
        verdict = "PASS" if carried(proxy, more) else "MISS"
        lines.append(
            f"- {verdict} the proxy carries {rate} with added p99 ≤ {CARRY_P99_MS:g} ms: {shown}"
        )
    cpu = [None if m is None else m.cpu_per_chunk for m in (proxy, nginx)]
    if cpu[0] is None or cpu[1] is None or not cpu[1]:
        lines.append(f"- n/a  CPU per paced chunk ≤ 1.5x nginx at {rate} (a lane did not run)")
    else:
        share = cpu[0] / cpu[1]
        verdict = "PASS" if share <= 1.5 else "MISS"
        lines.append(f"- {verdict} CPU per paced chunk ≤ 1.5x nginx at {rate}: {share:.2f}x")
    report = f"{plan.report_streams * 1000 / plan.interval_ms / 1000:g}k chunks/s"
    if readings.steady.runs:
        lines += own_figures.targets(readings.steady, report)
    else:
        lines.append(f"- n/a  the proxy's ITL and TTFT at {report} (the proxy lane did not run)")
    return lines


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (or append it)."""
    Report.write(path, section, SECTION)


def lane_list(text: str) -> list[str]:
    """--lanes: comma-separated names, each a lane besides direct."""
    lanes = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in lanes if name not in LANES[1:]]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown lane {unknown[0]!r}; choose from {', '.join(LANES[1:])}"
        )
    return lanes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument(
        "--lanes",
        type=lane_list,
        metavar="LANE,...",
        help="run only these lanes besides direct, from: proxy, baseline, nginx (default: all)",
    )
    parser.add_argument(
        "--no-nginx", dest="nginx", action="store_false", help="skip the nginx lane"
    )
    parser.add_argument(
        "--svg",
        type=Path,
        default=BENCH / "stream_rate.svg",
        help="where to write the saturation curve (default: benchmarks/stream_rate.svg)",
    )
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    parser.add_argument(
        "--compare-checkout",
        type=Path,
        metavar="DIR",
        help="also run the proxy from another checkout (e.g. `git worktree add DIR <commit>`)",
    )
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-stream-rate-") as directory:
        bench = StreamRate(args, Path(directory))
        readings = run(bench)
    results, extra = combine(readings.raw)
    args.svg.parent.mkdir(parents=True, exist_ok=True)
    args.svg.write_text(svg(results, extra, bench))
    root = BENCH.parent
    svg_path = args.svg.resolve()
    figure = str(svg_path.relative_to(root)) if svg_path.is_relative_to(root) else None
    command = shlex.join(
        ["python", "benchmarks/bench_stream_rate.py", *(sys.argv[1:] if argv is None else argv)]
    )
    text = render(
        results,
        extra,
        readings,
        bench,
        command=command,
        seconds=time.monotonic() - started,
        quick=args.quick,
        figure=figure,
    )
    print(text)
    print(f"# saturation curve written to {args.svg}", file=sys.stderr)
    if args.write:
        write_section(root / "BENCHMARKS.md", text)


if __name__ == "__main__":
    main()
