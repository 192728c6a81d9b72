"""The engine-rate benchmark's client, in its own process: C streams, raw asyncio.

Two shapes of load, both through one URL, each stream on its own keep-alive connection:

  at once (default)  C streams opened in the same instant, each --chunks content chunks long.
  --churn            C streams kept open: stream slot i opens its first at i x (chunks x step
                     / C), each lasts --chunks steps, and when one ends its slot sends the next
                     request on the same connection, so starts spread evenly (C / chunks a step).

For every content chunk it records receive time minus the send time the engine stamped in it
(``t<ns>``, time.monotonic_ns(): CLOCK_MONOTONIC, one clock for every process here) and the
engine's own interval (the stamp minus the stream's previous one); for every request, its TTFT:
from just before its request is written to its first content chunk.

On stdout: ``READY`` once every slot's first stream has had its first chunk. Then it reads
``BEGIN`` and ``END`` lines on stdin (EOF counts as both), the window, and answers ``BEGUN <ns>``
and ``ENDED <ns>``. With --scrape it reads the proxy's /internal/metrics at each mark, written at
a moment when no request awaits its first chunk (sending new requests is held back until then,
at most a step or so): every request sent before the mark had its first chunk, so the proxy
observed its TTFT before it, and every one sent after it is observed after it. The requests sent
between the marks are therefore exactly those whose TTFT the proxy observed between its reads.
After END no stream starts; the open ones finish (bounded by --seconds) and it prints
``RESULT {json}``: latency p50/p99 over the chunks received in the window, the engine's mean
interval there, mean TTFT over all requests and over those sent in the window, and with --scrape
the proxy's TTFT and inter-token _sum/_count between the marks.

Run: python benchmarks/stream_client.py URL --streams 100 --chunks 500 [--churn]
                                            [--interval-ms 10] [--scrape] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

_STAMP = re.compile(rb'"content":"t(\d+)"')
_BODY = b'{"model":"bench","messages":[{"role":"user","content":"Hi"}],"stream":true}'
_LAST_CHUNK = b"0\r\n\r\n"  # the end of a chunked body: the connection is free again
TTFT = "vllm:time_to_first_token_seconds"
ITL = "vllm:inter_token_latency_seconds"


def percentile(values: list[int], fraction: float) -> float:
    """The nearest-rank percentile (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def histogram_totals(snapshot: bytes, name: str) -> tuple[float, int]:
    """(sum, count) of a histogram over all its samples, from a /internal/metrics snapshot."""
    total, count = 0.0, 0
    for family in json.loads(snapshot)["families"]:
        if family["name"] == name:
            for sample in family["samples"]:
                total += float(sample["sum"])
                count += int(sample["count"])
    return total, count


def proxy_delta(before: bytes, after: bytes) -> dict[str, float]:
    """The proxy's TTFT and inter-token _sum and _count from one snapshot to the next."""
    delta: dict[str, float] = {}
    for key, name in (("ttft", TTFT), ("itl", ITL)):
        sum0, count0 = histogram_totals(before, name)
        sum1, count1 = histogram_totals(after, name)
        delta[f"{key}_sum"] = sum1 - sum0
        delta[f"{key}_count"] = count1 - count0
    return delta


class Run:
    """Every record of the run, and the counts that gate READY and the marks."""

    def __init__(self, slots: int) -> None:
        loop = asyncio.get_running_loop()
        self.received = array("q")  # per content chunk: receive time, latency (ns)
        self.latency = array("q")
        self.step_at = array("q")  # per content chunk after a stream's first: receive time,
        self.steps = array("q")  # and the engine's interval before it (ns)
        self.sent = array("q")  # per request with a first chunk: sent at, TTFT, and its
        self.ttft = array("q")  # first chunk's receive time minus the engine's stamp (ns)
        self.first_latency = array("q")
        self.slots = slots
        self.begun = 0  # slots whose first stream had its first chunk (or failed)
        self.pending = 0  # requests written that have had no first chunk yet
        self.errors = 0
        self.requests = 0
        self.stopping = False
        self.ready = loop.create_future()
        self._quiet: asyncio.Future[None] | None = None
        self._held: asyncio.Future[None] | None = None

    def request_sent(self) -> None:
        self.requests += 1
        self.pending += 1

    def first_chunk(self, sent: int, now: int | None, opening: bool, latency: int = 0) -> None:
        """A request's first content chunk came at ``now`` (None: it failed before one)."""
        self.pending -= 1
        if now is not None:
            self.sent.append(sent)
            self.ttft.append(now - sent)
            self.first_latency.append(latency)
        if opening:
            self.begun += 1
            if self.begun >= self.slots and not self.ready.done():
                self.ready.set_result(None)
        if not self.pending and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    async def gate(self) -> None:
        """Before a request is written: wait while a mark holds new requests back."""
        while self._held is not None:
            await self._held

    def hold(self) -> None:
        """From now until release(), new requests wait at the gate."""
        if self._held is None:
            self._held = asyncio.get_running_loop().create_future()

    async def quiet(self) -> None:
        """Until no request awaits its first chunk (one already past the gate may still be
        written meanwhile: the check is made again)."""
        while self.pending:
            self._quiet = asyncio.get_running_loop().create_future()
            await self._quiet

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None and not held.done():
            held.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive connection, one streamed response at a time."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.buffer = b""
        self.sent = 0
        self.opening = False
        self.head = True
        self.first = True
        self.done = False
        self.last_stamp = 0
        self.response: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, request: bytes, opening: bool) -> asyncio.Future[bool]:
        """Write one request; the future says whether its stream ended with [DONE]."""
        assert self.transport is not None
        self.buffer, self.head, self.first, self.done = b"", True, True, False
        self.opening, self.last_stamp = opening, 0
        self.response = asyncio.get_running_loop().create_future()
        self.sent = time.monotonic_ns()
        self.transport.write(request)
        self.run.request_sent()
        return self.response

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
        if self.done:
            self._after_done(buffer)
            return
        cut = buffer.rfind(b"\n\n")
        if cut < 0:
            self.buffer = buffer
            return
        events, buffer = buffer[: cut + 2], buffer[cut + 2 :]
        self._record(events, now)
        if b"data: [DONE]" in events:
            self.done = True
            self._after_done(buffer)
        else:
            self.buffer = buffer

    def _record(self, events: bytes, now: int) -> None:
        run = self.run
        for match in _STAMP.finditer(events):
            stamp = int(match.group(1))
            run.received.append(now)
            run.latency.append(now - stamp)
            if self.last_stamp:
                run.step_at.append(now)
                run.steps.append(stamp - self.last_stamp)
            self.last_stamp = stamp
            if self.first:
                self.first = False
                run.first_chunk(self.sent, now, self.opening, now - stamp)

    def _after_done(self, rest: bytes) -> None:
        """After [DONE], the chunked body's last chunk frees the connection."""
        if _LAST_CHUNK in rest:
            self._end(True)
        else:
            self.buffer = rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end(self.done)

    def _end(self, ok: bool) -> None:
        response = self.response
        if response is None or response.done():
            return
        if self.first:
            self.run.first_chunk(self.sent, None, self.opening)
        if not ok and self.transport is not None:
            self.closed = True
            self.transport.close()
        response.set_result(ok)


Opener = Callable[[], Awaitable[Connection | None]]


async def slot(run: Run, opener: Opener, request: bytes, delay: float, churn: bool) -> None:
    """One stream slot: its streams, one after another while churning."""
    connection: Connection | None = None
    opening = True
    try:
        await asyncio.sleep(delay)
        while not run.stopping:
            await run.gate()
            if run.stopping:
                break
            if connection is None or connection.closed:
                connection = await opener()
            if connection is None:
                run.errors += 1
                if opening:  # a slot that never began must not hold READY back
                    run.request_sent()
                    run.first_chunk(0, None, opening)
                return
            ok = await connection.send(request, opening)
            run.errors += not ok
            opening = False
            if not churn:
                break
    finally:
        if connection is not None and connection.transport is not None:
            connection.transport.close()


class Scraper(asyncio.Protocol):
    """One GET of /internal/metrics on a connection opened beforehand, so that the request is
    written at the instant the caller chooses."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.body: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        head, sep, body = bytes(self.data).partition(b"\r\n\r\n")
        if not sep:
            return
        length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
        if length is not None and len(body) >= int(length.group(1)) and not self.body.done():
            self.body.set_result(body[: int(length.group(1))])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.body.done():
            self.body.set_exception(ConnectionError("metrics connection closed"))


class Client:
    """The run's requests and its two marks."""

    def __init__(self, args: argparse.Namespace, run: Run) -> None:
        url = urlsplit(args.url)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.args = args
        self.run = run
        self.request = (
            f"POST {url.path or '/'} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
            f"x-bench-chunks: {args.chunks}\r\nContent-Length: {len(_BODY)}\r\n\r\n"
        ).encode() + _BODY
        self.scrapes: list[asyncio.Future[bytes]] = []
        self.quiet = True  # every mark was taken with no request awaiting its first chunk

    async def open(self) -> Connection | None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(
                lambda: Connection(self.run), self.host, self.port
            )
        except OSError:
            return None
        return connection

    async def mark(self) -> int:
        """Now, or with --scrape: the instant the proxy's metrics were asked for."""
        if not self.args.scrape:
            return time.monotonic_ns()
        loop = asyncio.get_running_loop()
        _, scraper = await loop.create_connection(Scraper, self.host, self.port)
        request = (
            f"GET /internal/metrics HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self.run.hold()
        try:
            try:
                # Within an engine step or two the requests awaiting a first chunk get it.
                async with asyncio.timeout(20 * self.args.interval_ms / 1000):
                    await self.run.quiet()
            except TimeoutError:
                self.quiet = False
            at = time.monotonic_ns()
            assert scraper.transport is not None
            scraper.transport.write(request)  # no await since the check: nothing was sent
        finally:
            self.run.release()
        self.scrapes.append(scraper.body)
        return at

    async def window(self, deadline: float) -> tuple[int, int]:
        """READY, then the BEGIN and END marks (EOF or the deadline: now)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(self.run.ready)
            print("READY", flush=True)
        except TimeoutError:
            pass
        marks = []
        for word in ("BEGUN", "ENDED"):
            try:
                async with asyncio.timeout_at(deadline):
                    await reader.readline()
            except TimeoutError:
                pass
            marks.append(await self.mark())
            print(f"{word} {marks[-1]}", flush=True)
        return marks[0], marks[1]

    async def proxy_figures(self) -> dict[str, float] | None:
        """The proxy's TTFT and inter-token _sum/_count between the two marks."""
        if len(self.scrapes) != 2:
            return None
        before, after = await asyncio.wait_for(asyncio.gather(*self.scrapes), 30)
        return proxy_delta(before, after)


def in_window(at: array[int], values: array[int], begin: int, end: int) -> list[int]:
    return [value for time_ns, value in zip(at, values, strict=True) if begin <= time_ns < end]


def summary(run: Run, begin: int, end: int) -> dict[str, Any]:
    latency = in_window(run.received, run.latency, begin, end)
    steps = in_window(run.step_at, run.steps, begin, end)
    ttft = in_window(run.sent, run.ttft, begin, end)
    first_latency = in_window(run.sent, run.first_latency, begin, end)
    return {
        "streams": run.slots,
        "requests": run.requests,
        "chunks": len(run.latency),
        "window_chunks": len(latency),
        "window_s": (end - begin) / 1e9,
        "p50": percentile(latency, 0.50) / 1e9,
        "p99": percentile(latency, 0.99) / 1e9,
        "max": (max(latency) if latency else 0) / 1e9,
        "step_sum": sum(steps) / 1e9,
        "step_count": len(steps),
        "all_step_sum": sum(run.steps) / 1e9,
        "all_step_count": len(run.steps),
        "ttft_mean": sum(run.ttft) / len(run.ttft) / 1e9 if run.ttft else 0.0,
        "ttft_count": len(run.ttft),
        "window_ttft_sum": sum(ttft) / 1e9,
        "window_ttft_count": len(ttft),
        "window_first_latency_sum": sum(first_latency) / 1e9,
        "errors": run.errors,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.seconds
    run = Run(args.streams)
    client = Client(args, run)
    # Under churn, slot i begins i shares into one stream's life: starts spread evenly.
    share = args.chunks * args.interval_ms / 1000 / args.streams if args.churn else 0.0
    slots = [
        loop.create_task(slot(run, client.open, client.request, i * share, args.churn))
        for i in range(args.streams)
    ]
    begin, end = await client.window(deadline)
    run.stopping = True
    _, open_slots = await asyncio.wait(slots, timeout=max(0.1, deadline - loop.time()))
    for task in open_slots:  # still streaming at the time bound: cut
        task.cancel()
    await asyncio.gather(*slots, return_exceptions=True)
    result = summary(run, begin, end)
    result["cut"] = len(open_slots)
    result["quiet"] = client.quiet
    try:
        proxy = await client.proxy_figures()
    except (OSError, TimeoutError, ValueError, KeyError) as error:
        result["proxy_error"] = f"{type(error).__name__}: {error}"
    else:
        if proxy is not None:
            result["proxy"] = proxy
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("--streams", type=int, required=True, help="C: streams open at once")
    parser.add_argument("--chunks", type=int, required=True, help="content chunks per stream")
    parser.add_argument("--churn", action="store_true", help="keep C open, starts staggered")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="the engine's step")
    parser.add_argument(
        "--scrape", action="store_true", help="read the proxy's /internal/metrics at the marks"
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="bound on the whole run")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
