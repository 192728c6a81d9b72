"""The engine-rate benchmark's client, in its own process: C streams at once, raw asyncio.

Opens --streams streaming chat requests to URL at once (one connection each), and for every
content chunk records its receive time minus the send time the engine stamped in its content
text (``t<ns>``, time.monotonic_ns(): CLOCK_MONOTONIC, one clock for every process here).
Prints ``READY`` once every stream has had its first content chunk, then reads one line
``WINDOW <start_ns> <end_ns>`` from stdin (the steady-state window the caller read CPU over)
and prints ``RESULT {json}``: chunks received in the window, their latency p50/p99, the mean
time to first content chunk, errors. Bounded by --seconds: streams not done by then are cut.

Run: python benchmarks/stream_client.py URL --streams 100 --chunks 500 [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from array import array
from typing import Any
from urllib.parse import urlsplit

_STAMP = re.compile(rb'"content":"t(\d+)"')
_BODY = b'{"model":"bench","messages":[{"role":"user","content":"Hi"}],"stream":true}'


def percentile(values: list[int], fraction: float) -> float:
    """The nearest-rank percentile (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


class Run:
    """Every stream's records: receive times and latencies (ns), first-chunk times."""

    def __init__(self, streams: int) -> None:
        self.received = array("q")
        self.latency = array("q")
        self.ttft: list[int] = []
        self.streams = streams
        self.first = 0
        self.finished = 0
        self.errors = 0
        self.ready = asyncio.get_running_loop().create_future()
        self.all_done = asyncio.get_running_loop().create_future()

    def stream_ended(self, ok: bool) -> None:
        self.finished += 1
        self.errors += not ok
        if not ok:
            self.first_chunk()  # a failed stream must not hold READY back
        if self.finished == self.streams and not self.all_done.done():
            self.all_done.set_result(None)

    def first_chunk(self) -> None:
        self.first += 1
        if self.first >= self.streams and not self.ready.done():
            self.ready.set_result(None)


class StreamProtocol(asyncio.Protocol):
    def __init__(self, run: Run, request: bytes) -> None:
        self.run = run
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.sent = 0
        self.head = True
        self.buffer = b""
        self.first = True
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sent = time.monotonic_ns()
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        buffer = self.buffer + data
        if self.head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if not buffer.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                self._end(False)
                return
            self.head = False
            buffer = buffer[end + 4 :]
        cut = buffer.rfind(b"\n\n")
        if cut < 0:
            self.buffer = buffer
            return
        events, self.buffer = buffer[: cut + 2], buffer[cut + 2 :]
        run = self.run
        for match in _STAMP.finditer(events):
            run.received.append(now)
            run.latency.append(now - int(match.group(1)))
            if self.first:
                self.first = False
                run.ttft.append(now - self.sent)
                run.first_chunk()
        if b"data: [DONE]" in events:
            self._end(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(False)

    def _end(self, ok: bool) -> None:
        if self.ended:
            return
        self.ended = True
        self.run.stream_ended(ok)
        if self.transport is not None:
            self.transport.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    request = (
        f"POST {url.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"x-bench-chunks: {args.chunks}\r\nContent-Length: {len(_BODY)}\r\n\r\n"
    ).encode() + _BODY
    loop = asyncio.get_running_loop()
    run = Run(args.streams)
    deadline = loop.time() + args.seconds

    async def open_one() -> asyncio.Transport | None:
        try:
            transport, _ = await loop.create_connection(
                lambda: StreamProtocol(run, request), host, port
            )
            return transport
        except OSError:
            run.stream_ended(False)
            return None

    transports = await asyncio.gather(*(open_one() for _ in range(args.streams)))
    try:
        await asyncio.wait_for(asyncio.shield(run.ready), max(0.1, deadline - loop.time()))
        print("READY", flush=True)
        await asyncio.wait_for(run.all_done, max(0.1, deadline - loop.time()))
    except TimeoutError:
        pass
    cut = sum(1 for t in transports if t is not None and not t.is_closing())
    for transport in transports:
        if transport is not None:
            transport.close()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    parts = line.split()
    start, end = (int(parts[1]), int(parts[2])) if len(parts) == 3 else (0, 2**62)
    window = [lat for got, lat in zip(run.received, run.latency, strict=True) if start <= got < end]
    return {
        "streams": args.streams,
        "chunks": len(run.latency),
        "window_chunks": len(window),
        "window_s": (end - start) / 1e9 if parts else 0.0,
        "p50": percentile(window, 0.50) / 1e9,
        "p99": percentile(window, 0.99) / 1e9,
        "max": (max(window) if window else 0) / 1e9,
        "ttft_mean": sum(run.ttft) / len(run.ttft) / 1e9 if run.ttft else 0.0,
        "ttft_count": len(run.ttft),
        "errors": run.errors,
        "cut": cut,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
