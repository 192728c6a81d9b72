"""Engine-rate streaming: C streams, one chunk to each every engine step, through each lane.

An engine-shaped upstream (benchmarks/engine_upstream.py) sends, every step (10 ms), one SSE
chunk to EACH of C open streams at once, each stamped with its send time; a client process
(benchmarks/stream_client.py) opens the C streams through the lane under test and records, per
chunk, receive time minus send time. Offered rate = C / step. Lanes, side by side in one run:
direct, metrics_proxy (``python -m metrics_proxy``, default settings: usage asked upstream and
stripped), bare aiohttp (baseline_proxy.py) and nginx (proxy_buffering off).

Run: python benchmarks/bench_stream_rate.py [--quick] [--no-nginx] [--svg PATH] [--write]
--svg writes the saturation curve (default benchmarks/stream_rate.svg, a generated file);
--write replaces the "Engine-rate streaming" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
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
from report import Report, _cpu_model, _wrap, number
from svg_chart import Panel, line_chart

SECTION = "## Engine-rate streaming"
CARRY_P99_MS = 5.0
LANES = ("direct", "proxy", "baseline", "nginx")
LABELS = {
    "direct": "direct",
    "proxy": "metrics_proxy",
    "baseline": "bare aiohttp",
    "nginx": "nginx",
}


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


FULL = Plan(10.0, (50, 100, 200, 300), 0.5, 3.0, 60.0, 200, True, 3)
QUICK = Plan(10.0, (5, 10), 0.1, 0.3, 20.0, 10, False, 1)


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
    return math.ceil((plan.ramp + plan.window + 1.5) * 1000 / plan.interval_ms)


class StreamRate:
    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.plan = QUICK if args.quick else FULL
        upstream = [str(BENCH / "engine_upstream.py"), "--interval-ms", str(self.plan.interval_ms)]
        # The proxy as a user starts it: default settings.
        self.servers = Servers(directory, upstream, {"proxy": ProxyLane()})
        self.pinning = self.servers.pinning
        self.loader = Loader("python", directory, self.servers.load_cpus)
        self.nginx = args.nginx and shutil.which("nginx") is not None
        self.lanes = [lane for lane in LANES if lane != "nginx" or self.nginx]
        self.notes: list[str] = []

    def stack(self) -> AbstractContextManager[dict[str, Child]]:
        """The engine upstream (load cores) and each lane's server (the measured core)."""
        return self.servers.stack(self.lanes)

    def run_once(self, lane: str, child: Child, streams: int) -> Measured:
        """One client run of ``streams`` streams; latency and CPU over the steady window."""
        plan = self.plan
        argv = [sys.executable, str(BENCH / "stream_client.py")]
        argv += [child.url + "/v1/chat/completions", "--streams", str(streams)]
        argv += ["--chunks", str(chunks_per_stream(plan)), "--seconds", str(plan.seconds)]
        process = self.loader.popen(argv)
        offered = streams * 1000 / plan.interval_ms
        try:
            reader = LineReader(process)
            cpu: float | None = None
            start_ns = end_ns = 0
            try:
                reader.wait_for("READY", plan.seconds)
                time.sleep(plan.ramp)
                start_ns, before = time.monotonic_ns(), cpu_seconds(child.pid)
                time.sleep(plan.window)
                end_ns, after = time.monotonic_ns(), cpu_seconds(child.pid)
                cpu = after - before
            except RuntimeError:
                self.notes.append(f"{lane} at {offered:,.0f} chunks/s: streams never all began")
            out = (
                reader.rest()
                + process.communicate(f"WINDOW {start_ns} {end_ns}\n", timeout=plan.seconds + 30)[0]
            )
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        result: dict[str, Any] | None = None
        for line in out.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
        if result is None:
            raise RuntimeError(f"stream_client printed no result: {out[-2000:]}")
        if result["errors"] or result["cut"]:
            self.notes.append(
                f"{lane} at {offered:,.0f} chunks/s: {result['errors']} streams failed, "
                f"{result['cut']} cut at the time bound"
            )
        chunks = result["window_chunks"]
        window = result["window_s"] or float("nan")
        return Measured(
            lane,
            streams,
            offered,
            chunks / window if chunks else 0.0,
            result["p50"],
            result["p99"],
            None if lane == "direct" or cpu is None or not chunks else cpu / chunks,
            result["ttft_mean"],
            result["errors"],
        )


def histogram(url: str, name: str) -> tuple[float, int]:
    """(sum, count) of a histogram over all its samples, from the proxy's /internal/metrics."""
    with urllib.request.urlopen(url + "/internal/metrics", timeout=10) as response:
        snapshot = json.loads(response.read())
    total, count = 0.0, 0
    for family in snapshot["families"]:
        if family["name"] == name:
            for sample in family["samples"]:
                total += float(sample["sum"])
                count += int(sample["count"])
    return total, count


ITL = "vllm:inter_token_latency_seconds"
TTFT = "vllm:time_to_first_token_seconds"


def run(bench: StreamRate) -> tuple[list[Measured], dict[str, float]]:
    """Every client run, rounds interleaved (each round: every rate, every lane), and the
    proxy's own ITL and TTFT (_sum and _count summed over its runs at the report rate)."""
    plan = bench.plan
    raw: list[Measured] = []
    sums = {"itl": 0.0, "itl_n": 0, "ttft": 0.0, "ttft_n": 0}
    client_ttft: list[float] = []
    with bench.stack() as servers:
        for lane in bench.lanes if plan.warm_up else ():  # connections, code paths
            bench.run_once(lane, servers[lane], 20)
        bench.notes.clear()  # warm-up notes are not figures
        for index in range(plan.rounds):
            for streams in plan.streams:
                for lane in bench.lanes:
                    print(
                        f"# round {index + 1}: {lane} at {streams} streams ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    reading = lane == "proxy" and streams == plan.report_streams
                    if reading:
                        itl0, ttft0 = (histogram(servers[lane].url, n) for n in (ITL, TTFT))
                    measured = bench.run_once(lane, servers[lane], streams)
                    measured.round = index
                    raw.append(measured)
                    if reading:
                        itl1, ttft1 = (histogram(servers[lane].url, n) for n in (ITL, TTFT))
                        sums["itl"] += itl1[0] - itl0[0]
                        sums["itl_n"] += itl1[1] - itl0[1]
                        sums["ttft"] += ttft1[0] - ttft0[0]
                        sums["ttft_n"] += ttft1[1] - ttft0[1]
                        client_ttft.append(measured.ttft_mean)
    own: dict[str, float] = {}
    if client_ttft:
        nan = float("nan")
        own = {
            "rate": plan.report_streams * 1000 / plan.interval_ms,
            "itl_mean": sums["itl"] / sums["itl_n"] if sums["itl_n"] else nan,
            "itl_count": sums["itl_n"],
            "ttft_mean": sums["ttft"] / sums["ttft_n"] if sums["ttft_n"] else nan,
            "ttft_count": sums["ttft_n"],
            "client_ttft": statistics.fmean(client_ttft),
        }
    return raw, own


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
    own: dict[str, float],
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
    if own:
        lines += [
            "",
            f"The proxy's own figures at {own['rate'] / 1000:g}k chunks/s, from its "
            "/internal/metrics (raw _sum/_count summed over its runs at that rate, "
            "not bucket percentiles):",
            "",
            "| figure | the proxy's | compared with |",
            "| --- | --- | --- |",
            f"| mean inter-token latency ({own['itl_count']:,.0f} observations) "
            f"| {number(own['itl_mean'] * 1e3, 'ms')} "
            f"| the engine step: {plan.interval_ms:g} ms |",
            f"| TTFT sum per request ({own['ttft_count']:,.0f} requests) "
            f"| {number(own['ttft_mean'] * 1e3, 'ms')} "
            f"| client-measured mean TTFT: {number(own['client_ttft'] * 1e3, 'ms')} |",
        ]
    if figure:
        lines += ["", f"![added latency vs offered rate]({figure})"]
    if bench.notes:
        lines += ["", "Notes:", "", *(f"- {note}" for note in bench.notes)]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace this benchmark's section of BENCHMARKS.md (or append it)."""
    Report.write(path, section, SECTION)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
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
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-stream-rate-") as directory:
        bench = StreamRate(args, Path(directory))
        raw, own = run(bench)
    results, extra = combine(raw)
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
        own,
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
