"""The benchmark's pure-Python load, run in its own process: an aiohttp client, loopback only.

Every mode is bounded in count and in time and prints one ``RESULT {json}`` line:

  requests  N requests at concurrency C (stops early at --seconds); latency p50/p99; with
            --tenants T, request i names tenant-(i mod T) in its X-Tenant header
  ttft      R rounds of C streams opened at once (or evenly over --spread seconds); time to
            the first content chunk's bytes
            (round 1 opens the connections and is not counted)
  hold      C streams held open after their first chunk; prints ``HELD`` and waits for a
            line on stdin (or --seconds) before closing them all
  get       N sequential GETs of each --path; latency p50 per path
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import resource
import sys
import time
from typing import Any

import aiohttp

TENANT_HEADER = "X-Tenant"  # what --tenants rotates (the benchmark's --tenant-header)


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of values (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def _session(concurrency: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)
    )


async def run_requests(args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    counter = itertools.count()
    deadline = time.monotonic() + args.seconds
    async with _session(args.concurrency) as session:

        async def worker() -> None:
            nonlocal errors
            while (number := next(counter)) < args.count and time.monotonic() < deadline:
                started = time.perf_counter()
                sent = headers
                if args.tenants:
                    sent = {**headers, TENANT_HEADER: f"tenant-{number % args.tenants}"}
                try:
                    async with session.post(args.url, data=args.body, headers=sent) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": elapsed,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
    }


async def run_ttft(args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any]:
    measured: list[float] = []
    errors = 0
    deadline = time.monotonic() + args.seconds
    async with _session(args.concurrency) as session:

        async def one(record: bool, wait: float) -> None:
            nonlocal errors
            await asyncio.sleep(wait)
            started = time.perf_counter()
            try:
                async with session.post(args.url, data=args.body, headers=headers) as resp:
                    seen = b""
                    while args.marker not in seen:  # the first content, not the role chunk
                        piece = await resp.content.readany()
                        if not piece:
                            break
                        seen = seen[-64:] + piece
                    arrived = time.perf_counter()
                    await resp.read()
                    ok = resp.status == 200 and args.marker in seen
            except aiohttp.ClientError:
                ok = False
            if not ok:
                errors += 1
            elif record:
                measured.append(arrived - started)

        for round_number in range(args.rounds):
            if time.monotonic() > deadline:
                break
            # Round 1 opens the connections (a connect storm is not what is measured).
            record = round_number > 0 or args.rounds == 1
            step = args.spread / args.concurrency
            await asyncio.gather(*(one(record, i * step) for i in range(args.concurrency)))
    return {
        "streams": len(measured),
        "errors": errors,
        "p50": percentile(measured, 0.5),
        "p99": percentile(measured, 0.99),
    }


async def run_hold(args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any]:
    opening = asyncio.Semaphore(64)  # a few at a time: no SYN-backlog overflow, no retries
    held = 0
    errors = 0
    settled = asyncio.Event()  # every stream is held or failed
    release = asyncio.Event()
    async with _session(args.concurrency) as session:

        async def one() -> None:
            nonlocal held, errors
            try:
                async with opening:
                    resp = await session.post(args.url, data=args.body, headers=headers)
                    await resp.content.readany()
                held += 1
                _count()
                try:
                    await release.wait()
                finally:
                    resp.close()
            except aiohttp.ClientError:
                errors += 1
                _count()

        def _count() -> None:
            if held + errors >= args.concurrency:
                settled.set()

        tasks = [asyncio.create_task(one()) for _ in range(args.concurrency)]
        try:
            async with asyncio.timeout(args.seconds):
                await settled.wait()
                print(f"HELD {held} {errors}", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        except TimeoutError:
            print(f"HELD {held} {errors}", flush=True)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"held": held, "errors": errors}


async def run_get(args: argparse.Namespace, headers: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    deadline = time.monotonic() + args.seconds
    async with _session(1) as session:
        for path in args.path:
            samples: list[float] = []
            for _ in range(args.count):
                if time.monotonic() > deadline:
                    break
                started = time.perf_counter()
                async with session.get(args.url + path, headers=headers) as resp:
                    await resp.read()
                samples.append(time.perf_counter() - started)
            result[path] = percentile(samples, 0.5)
    return result


MODES = {"requests": run_requests, "ttft": run_ttft, "hold": run_hold, "get": run_get}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("url")
    parser.add_argument("--body", default="{}")
    parser.add_argument("--header", action="append", default=[], help="name:value")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--spread", type=float, default=0.0, help="ttft: open over this long")
    parser.add_argument("--marker", type=str.encode, default=b'"content":" tok"')
    parser.add_argument("--tenants", type=int, default=0, help="requests: tenants to rotate")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    result = asyncio.run(MODES[args.mode](args, headers))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
