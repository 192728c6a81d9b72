"""What one non-streaming request costs the proxy (or the bare aiohttp baseline), over a fixed
number of requests after a warm-up, measured one of four ways:

  cpu        CPU seconds of the lane's process, from /proc
  callgrind  instructions, under valgrind's callgrind: the steadiest figure on a noisy, shared
             machine (runs repeat within 0.5 %). The lane starts uninstrumented; instrumentation
             goes on and the counters are zeroed after the warm-up, and dumped after the
             measured requests.
  py-spy     1 kHz samples of the measured requests (py-spy on PATH or beside this Python),
             collapsed stacks to --out, and the functions in most samples printed
  cprofile   the whole run, start-up included, to --out (read it with `python -m pstats OUT`);
             its overhead per call skews it towards code that makes many calls

Run: python benchmarks/profile_requests.py [--lane proxy|baseline] [--tool cpu|callgrind|...]
         [--requests N] [--warm-up N] [--concurrency C] [--log-level info|warning]
         [--out PATH] [--proxy-flag=--read-timeout=0 ...]

The fast upstream (benchmarks/fast_upstream.py) and the load (benchmarks/load_client.py, every
request finished) run on the other cores, the lane on its own; PYTHONHASHSEED is fixed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench_proxy import NONSTREAM
from harness import BENCH, Child, Loader, cpu_seconds, free_port, split_cores

TOOLS = ("cpu", "callgrind", "py-spy", "cprofile")
_START_TIMEOUT = {"callgrind": 180.0, "cprofile": 40.0}  # seconds; 20 for the others
_PY_SPY_TOP = 40


def lane_argv(args: argparse.Namespace, upstream: str, port: int, out: Path) -> list[str]:
    py = [sys.executable]
    if args.tool == "cprofile":
        py += ["-m", "cProfile", "-o", str(out)]
    if args.lane == "baseline":
        argv = [*py, str(BENCH / "baseline_proxy.py"), upstream, "--port", str(port)]
    else:
        argv = [*py, "-m", "metrics_proxy.proxy_server", "--upstream-url", upstream]
        argv += ["--model-name", "bench", "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--log-level", args.log_level, *args.proxy_flag]
    if args.tool == "callgrind":
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        argv = [*valgrind, f"--callgrind-out-file={out}", *argv]
    return argv


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def callgrind_control(*options: str) -> None:
    subprocess.run(["callgrind_control", *options], check=True, capture_output=True, timeout=120)


def dumped_instructions(out: Path) -> int:
    """The total instruction count of the last dump callgrind wrote next to ``out``."""
    dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
    if not dumps:
        raise RuntimeError(f"callgrind wrote no dump next to {out}")
    for line in dumps[-1].read_text(errors="replace").splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


@contextmanager
def sampled(pid: int, out: Path) -> Iterator[None]:
    """py-spy samples ``pid`` while the block runs: collapsed stacks to ``out``."""
    spy = py_spy()
    assert spy is not None
    argv = [spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw"]
    process = subprocess.Popen(
        [*argv, "--nonblocking", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(1.0)  # py-spy says nothing once attached: give it the time it takes
    try:
        yield
    finally:
        os.killpg(process.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        process.wait(60)


def hottest(collapsed: Path, top: int) -> str:
    """The functions in most samples (with what they call), as a share of all samples."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for frame in {re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")}:
            inclusive[frame] += int(count)
    rows = (f"{100 * n / max(1, total):6.2f} %  {name}" for name, n in inclusive.most_common(top))
    return f"{total} samples\n" + "\n".join(rows)


def drive(loader: Loader, child: Child, count: int, concurrency: int) -> None:
    result = loader.python(
        "requests",
        child.url + "/v1/chat/completions",
        body=NONSTREAM,
        headers={},
        count=count,
        concurrency=concurrency,
        seconds=3600,
    )
    if result["errors"] or result["requests"] != count:
        raise RuntimeError(f"{child.name}: {result['errors']} errors, {result['requests']} done")


def measure(args: argparse.Namespace, directory: Path) -> str:
    measured, load_cpus, _ = split_cores()
    loader = Loader("python", directory, load_cpus)
    port = free_port()
    upstream_argv = [sys.executable, str(BENCH / "fast_upstream.py"), "--port", str(port)]
    upstream = Child("upstream", upstream_argv, port, load_cpus, directory / "upstream.log")
    out = Path(args.out or directory / f"{args.lane}.{args.tool}").resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = lane_argv(args, upstream.url, port, out)
    lane = Child(args.lane, argv, port, measured, directory / "lane.log")
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict and set orders every run
    upstream.start()
    try:
        lane.start(timeout=_START_TIMEOUT.get(args.tool, 20.0))
        try:
            return run(args, loader, lane, out)
        finally:
            if args.tool == "cprofile":
                os.killpg(lane.pid, signal.SIGINT)  # the profile is written on the way out
                assert lane.process is not None
                lane.process.wait(60)
            lane.stop()
    finally:
        upstream.stop()


def run(args: argparse.Namespace, loader: Loader, lane: Child, out: Path) -> str:
    drive(loader, lane, args.warm_up, args.concurrency)
    per = f"per request ({args.requests} requests, c{args.concurrency}, {args.lane})"
    if args.tool == "callgrind":
        callgrind_control("--instr=on", str(lane.pid))
        callgrind_control("--zero", str(lane.pid))
        drive(loader, lane, args.requests, args.concurrency)
        callgrind_control("--dump", str(lane.pid))
        return f"instructions {per}: {dumped_instructions(out) / args.requests:,.0f}"
    before = cpu_seconds(lane.pid)
    with sampled(lane.pid, out) if args.tool == "py-spy" else _nothing():
        drive(loader, lane, args.requests, args.concurrency)
    cpu = (cpu_seconds(lane.pid) - before) / args.requests
    report = f"CPU {per}: {cpu * 1e6:.1f} µs"
    if args.tool == "py-spy":
        report += f"\n{hottest(out, _PY_SPY_TOP)}"
    elif args.tool == "cprofile":
        report += f"\nprofile (start-up included): {out}"
    return report


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lane", choices=("proxy", "baseline"), default="proxy")
    parser.add_argument("--tool", choices=TOOLS, default="cpu")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warm-up", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--log-level", choices=("info", "warning"), default="info")
    parser.add_argument("--out", help="keep the profile, samples or callgrind output here")
    parser.add_argument(
        "--proxy-flag", action="append", default=[], help="one more proxy flag (repeatable)"
    )
    args = parser.parse_args()
    if args.tool == "callgrind" and shutil.which("valgrind") is None:
        parser.error("--tool callgrind needs valgrind on PATH")
    if args.tool == "py-spy" and py_spy() is None:
        parser.error("--tool py-spy needs py-spy (pip install py-spy)")
    if args.tool == "cprofile" and not args.out:
        parser.error("--tool cprofile needs --out")
    with tempfile.TemporaryDirectory(prefix="profile-requests-") as directory:
        print(measure(args, Path(directory)), flush=True)


if __name__ == "__main__":
    main()
