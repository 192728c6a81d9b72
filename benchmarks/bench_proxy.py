"""The proxy against direct, a bare aiohttp pass-through, nginx and the seed stack (the user's
original FastAPI tool): side by side, one run.

Run: python benchmarks/bench_proxy.py [--quick] [--only NAME] [--load auto|wrk|python]
                                      [--lanes LANE,...] [--no-nginx] [--no-uvloop]
                                      [--no-seed] [--write]
--quick is a smoke run (one round, tiny counts, well under a minute); --only picks figures,
--lanes the lanes besides direct and proxy. The seed stack needs the bench extra (`make bench`
installs it) and is skipped, saying so, without it.
--write replaces the "Proxy vs direct vs nginx" section of BENCHMARKS.md with the tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from harness import (
    BENCH,
    Child,
    LineReader,
    Loader,
    LoadResult,
    ProxyLane,
    Servers,
    cpu_seconds,
    rss_bytes,
)
from report import Figure, Proportion, Report

NONSTREAM = b'{"model":"bench","messages":[{"role":"user","content":"Hi"}],"max_tokens":16}'
STREAM = b'{"model":"bench","messages":[{"role":"user","content":"Hi"}],"stream":true}'
STREAM_USAGE = STREAM[:-1] + b',"stream_options":{"include_usage":true}}'


@dataclass(frozen=True)
class Plan:
    """How much load each figure gets; every load run is also bounded by ``seconds``."""

    rounds: int  # interleaved repetitions; a figure is the median over rounds
    requests: int  # non-streaming requests per lane per round, concurrency 16
    latency_c1: int  # requests per lane per round at concurrency 1
    streams: int  # streams per lane per round, concurrency 16, chunks as fast as they go
    chunks: int
    paced_streams: int  # streams per lane per round, concurrency 64, one chunk every 5 ms
    ttft_streams: int
    ttft_rounds: int  # per load process; the first opens connections and is not counted
    ttft_delay_ms: int
    ttft_spread: float  # the spread variant opens its streams evenly over this many seconds
    hold_streams: int
    render_samples: int
    soak_total: int
    soak_warmup: int
    seconds: float
    warm_up: bool = True  # a warm-up load on every lane before anything is measured
    settle: float = 1.0  # seconds for RSS to settle before it is read


FULL = Plan(3, 8_000, 1_500, 300, 200, 192, 500, 3, 300, 1.0, 2_000, 300, 100_000, 10_000, 120.0)
QUICK = Plan(1, 150, 30, 6, 40, 6, 20, 2, 20, 0.1, 40, 10, 400, 150, 20.0, False, 0.1)
PACED_CONCURRENCY = 64
PACED_INTERVAL_MS = 5
FIGURES = ("requests", "streams", "ttft", "hold", "render", "soak")
# Lanes besides direct and proxy (every figure is read against those two); --lanes picks.
OPTIONAL_LANES = (
    "baseline",
    "nginx",
    "seed",
    "proxy_info",
    "proxy_continuous",
    "proxy_uvloop",
    "proxy_tenants",
    "proxy_tenant_keys",
    "proxy_auto",
)
# At its pace the seed stack would take minutes over the same count: a quarter of the requests
# at c16; its rate and CPU are read over its own steady window all the same.
SEED_SHARE = 4
# --no-<lane> flags, by the lane each leaves out.
SKIPS = {"nginx": "nginx", "proxy_uvloop": "uvloop", "seed": "seed"}


PROXY_LANES = {
    "proxy": ProxyLane(("--log-level", "warning")),
    "proxy_info": ProxyLane(("--log-level", "info")),
    "proxy_continuous": ProxyLane(("--log-level", "warning", "--stream-usage", "continuous")),
    "proxy_uvloop": ProxyLane(("--log-level", "warning"), uvloop=True),
    # Attribution: by a gateway's header (the load names TENANTS tenants in turn), and by the
    # bearer token's keyed hash (an HMAC per request).
    "proxy_tenants": ProxyLane(("--log-level", "warning", "--tenant-header", "X-Tenant")),
    "proxy_tenant_keys": ProxyLane(
        ("--log-level", "warning", "--tenant-from-api-key"),
        env=(("PROXY_TENANT_SALT", "a benchmark's salt, not a secret"),),
    ),
    # Each request's model from its body, among those the fast upstream lists ("bench").
    "proxy_auto": ProxyLane(("--log-level", "warning", "--model-name", "auto")),
}
TENANTS = 8  # tenants the proxy_tenants lane's load names, in turn
SCRAPE_TENANTS = 100  # tenants with series when /metrics is timed with attribution on
# What each lane's load sends besides the body: attribution's lanes need a tenant.
LANE_HEADERS = {"proxy_tenant_keys": {"Authorization": "Bearer sk-bench-client-key"}}
LANE_TENANTS = {"proxy_tenants": TENANTS}


class Bench:
    """Starts the lanes each figure needs and runs the load against them."""

    def __init__(self, args: argparse.Namespace, directory: Path) -> None:
        self.plan = QUICK if args.quick else FULL
        self.servers = Servers(directory, [str(BENCH / "fast_upstream.py")], PROXY_LANES)
        self.pinning = self.servers.pinning
        tool = args.load
        if tool == "auto":
            tool = "wrk" if shutil.which("wrk") else "python"
        self.loader = Loader(tool, directory, self.servers.load_cpus)
        self.chosen = set(OPTIONAL_LANES if args.lanes is None else args.lanes)
        self.chosen -= {lane for lane, run in SKIPS.items() if not getattr(args, run)}
        # Lanes chosen that cannot run here, and why (the report says so).
        self.absent: dict[str, str] = {}
        if shutil.which("nginx") is None:
            self.absent["nginx"] = "nginx is not on PATH"
        if importlib.util.find_spec("uvloop") is None:
            self.absent["proxy_uvloop"] = "uvloop is not installed"
        if missing := seed_stack_missing():
            self.absent["seed"] = missing
        self.absent = {lane: why for lane, why in self.absent.items() if lane in self.chosen}
        self.report = Report(absent=self.absent)

    def lanes(self, wanted: Sequence[str]) -> list[str]:
        return [
            lane
            for lane in wanted
            if lane in ("direct", "proxy") or (lane in self.chosen and lane not in self.absent)
        ]

    def stack(self, lanes: Sequence[str]) -> AbstractContextManager[dict[str, Child]]:
        """The fast upstream and each lane's server; "direct" is the upstream itself."""
        return self.servers.stack(lanes)

    def load(
        self,
        child: Child,
        body: bytes,
        count: int,
        concurrency: int,
        headers: dict[str, str] | None = None,
        tenants: int = 0,
    ) -> tuple[int, float, float, float]:
        """Requests done, CPU seconds of ``child`` per request, latency p50 and p99."""
        result = self.measure(child, body, count, concurrency, headers, tenants)
        per_request = result.probed / max(1, result.window)
        return result.requests, per_request, result.p50, result.p99

    def measure(
        self,
        child: Child,
        body: bytes,
        count: int,
        concurrency: int,
        headers: dict[str, str] | None = None,
        tenants: int = 0,
    ) -> LoadResult:
        """One load run; ``probed`` is the CPU seconds of ``child`` over its window. A lane
        with attribution gets its tenants (LANE_HEADERS, LANE_TENANTS) too."""
        lane_headers = LANE_HEADERS.get(child.name, {})
        result = self.loader.requests(
            child.url,
            body,
            {**lane_headers, **(headers or {})},
            count,
            concurrency,
            self.plan.seconds,
            probe=lambda: cpu_seconds(child.pid),
            tenants=tenants or LANE_TENANTS.get(child.name, 0),
        )
        if result.errors or not result.requests:
            self.report.note(f"{child.name}: {result.errors} errors, {result.requests} done")
        return result


SEED_MODULES = ("fastapi", "uvicorn", "httpx", "prometheus_client")
SEED_DISTRIBUTIONS = ("fastapi", "uvicorn", "httpx", "prometheus-client")


def seed_stack_missing() -> str:
    """Why the seed stack cannot run here ("" when it can): its packages are the bench extra."""
    missing = [name for name in SEED_MODULES if importlib.util.find_spec(name) is None]
    if not missing:
        return ""
    return (
        f"{', '.join(missing)} not installed; the bench extra has them (`make bench` installs "
        "it, or `pip install -e '.[bench]'`)"
    )


def seed_stack_description() -> str:
    """The seed stack's packages as installed, and what uvicorn's defaults picked."""
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in SEED_DISTRIBUTIONS)
    # uvicorn's "auto" loop and parser: uvloop and httptools when importable.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return (
        f"benchmarks/seed_stack_proxy.py on {versions} (uvicorn's defaults here: "
        f"{loop} loop, {parser} parser)"
    )


def stream_headers(chunks: int, interval_ms: float = 0, delay_ms: float = 0) -> dict[str, str]:
    """The fast upstream's knobs for one stream (see benchmarks/fast_upstream.py)."""
    return {
        "x-bench-chunks": str(chunks),
        "x-bench-interval-ms": str(interval_ms),
        "x-bench-delay-ms": str(delay_ms),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_requests(bench: Bench) -> None:
    plan = bench.plan
    lanes = bench.lanes(
        [
            "direct",
            "proxy",
            "baseline",
            "nginx",
            "seed",
            "proxy_info",
            "proxy_uvloop",
            "proxy_tenants",
            "proxy_tenant_keys",
            "proxy_auto",
        ]
    )
    compared = [lane for lane in lanes if lane in ("direct", "proxy", "baseline", "nginx", "seed")]
    at_c1 = [*compared, *(lane for lane in lanes if lane == "proxy_uvloop")]
    cpu: dict[str, list[float]] = defaultdict(list)
    rate: dict[str, list[float]] = defaultdict(list)  # requests/s over the window, c16
    if "seed" in lanes:
        bench.report.seed_stack = seed_stack_description()
    # "<lane> <concurrency> <p50|p99>": the lane minus direct in the same round; for
    # "direct ...", direct's own latency.
    added: dict[str, list[float]] = defaultdict(list)
    with bench.stack(lanes) as servers:
        for lane in lanes if plan.warm_up else ():  # connections, caches, code paths
            bench.load(servers[lane], NONSTREAM, min(300, plan.requests), 16)
        for _ in range(plan.rounds):
            for concurrency, count, round_lanes in (
                (16, plan.requests, lanes),
                (1, plan.latency_c1, at_c1),
            ):
                latency = {}
                for lane in round_lanes:
                    share = SEED_SHARE if lane == "seed" and concurrency == 16 else 1
                    result = bench.measure(servers[lane], NONSTREAM, count // share, concurrency)
                    if concurrency == 16:
                        rate[lane].append(result.window / max(1e-9, result.window_seconds))
                        if lane != "direct":
                            cpu[lane].append(result.probed / max(1, result.window))
                    latency[lane] = (result.p50, result.p99)
                for lane in round_lanes:
                    for index, name in enumerate(("p50", "p99")):
                        base = 0.0 if lane == "direct" else latency["direct"][index]
                        added[f"{lane} {concurrency} {name}"].append(latency[lane][index] - base)
    report = bench.report
    rates = {lane: _median(values) for lane, values in rate.items()}
    report.add(
        Figure(
            "requests_c16",
            "non-streaming requests/s, c16",
            "req/s",
            {lane: value for lane, value in rates.items() if lane != "direct"},
            direct=rates.get("direct"),
        )
    )
    report.add(
        Figure(
            "cpu_request",
            "CPU per non-streaming request, c16",
            "µs",
            {k: _median(v) * 1e6 for k, v in cpu.items()},
        )
    )
    for concurrency in (1, 16):
        for name in ("p50", "p99"):
            values = {
                lane: _median(added[f"{lane} {concurrency} {name}"]) * 1e3 for lane in compared
            }
            direct = values.pop("direct")
            report.add(
                Figure(
                    f"added_{name}_c{concurrency}",
                    f"added {name} latency, c{concurrency}",
                    "ms",
                    values,
                    direct=direct,
                )
            )
    proxy = _median(cpu["proxy"]) * 1e6
    _attribution_costs(report, cpu, proxy)
    if "proxy_info" in cpu:
        report.alone(
            Proportion(
                "CPU per request with the INFO log line",
                _median(cpu["proxy_info"]) * 1e6,
                "µs",
                "--log-level warning",
                proxy,
            )
        )
    if "proxy_auto" in cpu:
        report.alone(
            Proportion(
                "CPU per request with `--model-name auto` (the model read from each body)",
                _median(cpu["proxy_auto"]) * 1e6,
                "µs",
                "a fixed --model-name",
                proxy,
            )
        )
    if "proxy_uvloop" in cpu:
        report.alone(
            Proportion(
                "CPU per request on uvloop",
                _median(cpu["proxy_uvloop"]) * 1e6,
                "µs",
                "asyncio loop",
                proxy,
            )
        )
        report.alone(
            Proportion(
                "added p50 latency, c1, on uvloop",
                _median(added["proxy_uvloop 1 p50"]) * 1e3,
                "ms",
                "asyncio loop",
                _median(added["proxy 1 p50"]) * 1e3,
            )
        )


def _attribution_costs(report: Report, cpu: dict[str, list[float]], proxy: float) -> None:
    """What attribution costs per request, against the proxy without it."""
    for lane, name in (
        ("proxy_tenants", f"CPU per request with --tenant-header ({TENANTS} tenants)"),
        ("proxy_tenant_keys", "CPU per request with --tenant-from-api-key (an HMAC each)"),
    ):
        if lane in cpu:
            report.alone(Proportion(name, _median(cpu[lane]) * 1e6, "µs", "no attribution", proxy))


def run_streams(bench: Bench) -> None:
    plan = bench.plan
    lanes = bench.lanes(["proxy", "proxy_continuous", "baseline", "nginx", "proxy_uvloop"])
    burst = stream_headers(plan.chunks)
    paced = stream_headers(plan.chunks, interval_ms=PACED_INTERVAL_MS)
    # (name, server lane, client body, upstream knobs, streams, concurrency); the client asks
    # for no usage unless it says so, so the proxy strips the usage chunk it asked for.
    runs = [(lane, lane, STREAM, burst, plan.streams, 16) for lane in lanes]
    runs.insert(1, ("proxy_client_usage", "proxy", STREAM_USAGE, burst, plan.streams, 16))
    for lane in ("proxy", "baseline", "nginx", "proxy_uvloop"):
        if lane in lanes:
            runs.append(
                (f"{lane} paced", lane, STREAM, paced, plan.paced_streams, PACED_CONCURRENCY)
            )
    cpu: dict[str, list[float]] = defaultdict(list)
    with bench.stack(lanes) as servers:
        for _, lane, body, headers, _, concurrency in runs if plan.warm_up else ():
            bench.load(servers[lane], body, concurrency, concurrency, headers)
        for _ in range(plan.rounds):
            for name, lane, body, headers, count, concurrency in runs:
                _, per_stream, _, _ = bench.load(servers[lane], body, count, concurrency, headers)
                cpu[name].append(per_stream / plan.chunks)
    per_chunk = {name: _median(values) * 1e6 for name, values in cpu.items()}
    main = ("proxy", "baseline", "nginx")
    bench.report.add(
        Figure(
            "cpu_chunk",
            f"CPU per streamed chunk ({plan.chunks}-chunk streams as fast as they go, c16)",
            "µs",
            {k: per_chunk[k] for k in main if k in per_chunk},
        )
    )
    bench.report.add(
        Figure(
            "cpu_chunk_paced",
            f"CPU per streamed chunk (one chunk per stream every {PACED_INTERVAL_MS} ms, "
            f"c{PACED_CONCURRENCY})",
            "µs",
            {k: per_chunk[f"{k} paced"] for k in main if f"{k} paced" in per_chunk},
        )
    )
    proxy = per_chunk["proxy"]
    if "proxy_continuous" in per_chunk:
        bench.report.alone(
            Proportion(
                "CPU per chunk, `--stream-usage continuous` (usage cut from every chunk)",
                per_chunk["proxy_continuous"],
                "µs",
                "`include` (default)",
                proxy,
            )
        )
    bench.report.alone(
        Proportion(
            "CPU per chunk when the client asked for usage (nothing to strip)",
            per_chunk["proxy_client_usage"],
            "µs",
            "client asked none (usage chunk stripped)",
            proxy,
        )
    )
    if "proxy_uvloop" in per_chunk:
        bench.report.alone(
            Proportion(
                "CPU per chunk on uvloop", per_chunk["proxy_uvloop"], "µs", "asyncio loop", proxy
            )
        )
        bench.report.alone(
            Proportion(
                "CPU per chunk on uvloop, paced",
                per_chunk["proxy_uvloop paced"],
                "µs",
                "asyncio loop",
                per_chunk["proxy paced"],
            )
        )


def run_ttft(bench: Bench) -> None:
    plan = bench.plan
    lanes = bench.lanes(["direct", "proxy", "baseline", "nginx"])
    # At once: every request arrives together and every first token comes back together.
    # Spread: arrivals even over ttft_spread seconds, first tokens after as long again, and
    # the streams go on (10 chunks, 50 ms apart), so all of them are open at the peak.
    variants = {
        "burst": (stream_headers(20, delay_ms=plan.ttft_delay_ms), 0.0),
        "spread": (
            stream_headers(10, interval_ms=plan.ttft_spread * 50, delay_ms=plan.ttft_spread * 1000),
            plan.ttft_spread,
        ),
    }
    samples: dict[str, list[float]] = defaultdict(list)
    with bench.stack(lanes) as servers:
        for _ in range(max(1, plan.rounds - 1)):
            for variant, (headers, spread) in variants.items():
                measured = {}
                for lane in lanes:
                    measured[lane] = bench.loader.python(
                        "ttft",
                        servers[lane].url + "/v1/chat/completions",
                        body=STREAM,
                        headers=headers,
                        concurrency=plan.ttft_streams,
                        rounds=plan.ttft_rounds,
                        spread=spread,
                        seconds=plan.seconds,
                    )
                    if measured[lane]["errors"]:
                        bench.report.note(f"ttft {lane}: {measured[lane]['errors']} errors")
                for lane in lanes:
                    for name in ("p50", "p99"):
                        base = 0 if lane == "direct" else measured["direct"][name]
                        samples[f"{variant} {lane} {name}"].append(measured[lane][name] - base)
    for variant, how in (
        ("burst", "opened at once"),
        ("spread", f"opened over {plan.ttft_spread:g} s"),
    ):
        for name in ("p50", "p99"):
            values = {lane: _median(samples[f"{variant} {lane} {name}"]) * 1e3 for lane in lanes}
            direct = values.pop("direct")
            key = f"added_ttft_{name}" + ("" if variant == "burst" else "_spread")
            label = f"added TTFT {name}, {plan.ttft_streams} streams {how}"
            bench.report.add(Figure(key, label, "ms", values, direct=direct))


def run_hold(bench: Bench) -> None:
    plan = bench.plan
    lanes = bench.lanes(["proxy", "baseline", "nginx"])
    per_stream: dict[str, float] = {}
    with bench.stack(lanes) as servers:
        for lane in lanes:
            child = servers[lane]
            if plan.warm_up:
                bench.load(child, NONSTREAM, 300, 16)
                bench.load(child, STREAM, 64, 16, stream_headers(20))
            time.sleep(plan.settle / 2)
            before = rss_bytes(child.pid)
            argv = bench.loader.python_argv(
                "hold",
                child.url + "/v1/chat/completions",
                body=STREAM,
                headers={"x-bench-hold-s": str(plan.seconds)},
                concurrency=plan.hold_streams,
                seconds=plan.seconds,
            )
            process = bench.loader.popen(argv)
            try:
                line = LineReader(process).wait_for("HELD", plan.seconds + 10)
                _, held, errors = line.split()
                time.sleep(plan.settle)
                during = rss_bytes(child.pid)
                process.communicate("release\n", timeout=60)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait(10)
            if int(errors):
                bench.report.note(f"hold {lane}: {errors} streams failed")
            per_stream[lane] = (during - before) / max(1, int(held)) / 1024
    bench.report.add(
        Figure("rss_stream", f"RSS per held stream, {plan.hold_streams} streams", "KB", per_stream)
    )


def run_render(bench: Bench) -> None:
    plan = bench.plan
    lanes = bench.lanes(["proxy", "proxy_tenants"])
    p50: dict[str, dict[str, float]] = {}
    size: dict[str, int] = {}
    with bench.stack(lanes) as servers:
        for lane in lanes:
            child = servers[lane]
            # With attribution, SCRAPE_TENANTS tenants' series (the default --tenant-limit).
            tenants = SCRAPE_TENANTS if lane == "proxy_tenants" else 0
            requests = max(min(2_000, plan.requests), 2 * tenants)
            bench.load(child, NONSTREAM, requests, 16, tenants=tenants)
            bench.load(child, STREAM, min(100, plan.streams), 16, stream_headers(20))
            paths = ["/metrics", "/internal/metrics", "/internal/healthz"]
            p50[lane] = bench.loader.python(
                "get", child.url, paths=paths, count=plan.render_samples, seconds=plan.seconds
            )
            with urllib.request.urlopen(child.url + "/metrics", timeout=10) as response:
                size[lane] = len(response.read())
    floor = p50["proxy"]["/internal/healthz"] * 1e3
    report = bench.report
    for path, name in (
        ("/metrics", "GET /metrics"),
        ("/internal/metrics", "GET /internal/metrics"),
    ):
        shown = f"{name} p50, idle after traffic"
        if path == "/metrics":
            shown += f" ({size['proxy'] // 1024} KB)"
        report.alone(
            Proportion(shown, p50["proxy"][path] * 1e3, "ms", "GET /internal/healthz", floor)
        )
    if "proxy_tenants" in p50:
        kilobytes = size["proxy_tenants"] // 1024
        report.alone(
            Proportion(
                f"GET /metrics p50 with {SCRAPE_TENANTS} tenants' series ({kilobytes} KB)",
                p50["proxy_tenants"]["/metrics"] * 1e3,
                "ms",
                "no attribution",
                p50["proxy"]["/metrics"] * 1e3,
            )
        )


def run_soak(bench: Bench) -> None:
    plan = bench.plan
    with bench.stack(["proxy"]) as servers:
        child = servers["proxy"]
        first, _, _, _ = bench.load(child, NONSTREAM, plan.soak_warmup, 16)
        warm = rss_bytes(child.pid) / 2**20
        rest, per_request, _, _ = bench.load(child, NONSTREAM, plan.soak_total - first, 16)
        end = rss_bytes(child.pid) / 2**20
    total = first + rest
    bench.report.alone(
        Proportion(
            f"soak: RSS after {total:,} requests (c16)",
            end,
            "MB",
            f"RSS after the first {first:,}",
            warm,
        )
    )
    bench.report.alone(
        Proportion(
            f"soak: CPU per request over the last {rest:,}", per_request * 1e6, "µs", "", None
        )
    )


RUNNERS: dict[str, Callable[[Bench], None]] = {
    "requests": run_requests,
    "streams": run_streams,
    "ttft": run_ttft,
    "hold": run_hold,
    "render": run_render,
    "soak": run_soak,
}


def lane_list(text: str) -> list[str]:
    """--lanes: comma-separated names, each one of OPTIONAL_LANES."""
    lanes = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in lanes if name not in OPTIONAL_LANES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown lane {unknown[0]!r}; choose from {', '.join(OPTIONAL_LANES)}"
        )
    return lanes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="a seconds-long smoke run: tiny counts"
    )
    parser.add_argument(
        "--only", choices=FIGURES, action="append", help="run only this figure (repeatable)"
    )
    parser.add_argument(
        "--load",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: Debian's wrk when on PATH (auto), or load_client.py",
    )
    parser.add_argument(
        "--lanes",
        type=lane_list,
        metavar="LANE,...",
        help="run only these lanes besides direct and proxy, from: "
        + ", ".join(OPTIONAL_LANES)
        + " (default: all)",
    )
    parser.add_argument(
        "--no-nginx", dest="nginx", action="store_false", help="skip the nginx lane"
    )
    parser.add_argument(
        "--no-uvloop", dest="uvloop", action="store_false", help="skip the uvloop lane"
    )
    parser.add_argument(
        "--no-seed", dest="seed", action="store_false", help="skip the seed stack lane"
    )
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args(argv)
    # A plain SIGTERM would skip the clean-up that stops every child: make it an exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as directory:
        bench = Bench(args, Path(directory))
        for name in args.only or FIGURES:
            print(f"# {name} ...", file=sys.stderr, flush=True)
            RUNNERS[name](bench)
    command = shlex.join(
        ["python", "benchmarks/bench_proxy.py", *(sys.argv[1:] if argv is None else argv)]
    )
    text = bench.report.render(
        command=command,
        seconds=time.monotonic() - started,
        load=bench.loader.tool,
        pinning=bench.pinning,
        nginx=bool(bench.lanes(["nginx"])),
        quick=args.quick,
    )
    print(text)
    if args.write:
        bench.report.write(BENCH.parent / "BENCHMARKS.md", text)


if __name__ == "__main__":
    main()
