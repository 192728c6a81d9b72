"""A fake vLLM engine for the engine-rate benchmark: one step every --interval-ms, and at each
step one SSE chunk to EVERY open stream at once, as a GPU engine emits a token per running
request per step. Raw asyncio (benchmarks/fast_upstream.py's connection handling), loopback only.

Each content chunk is vLLM's chat chunk shape, its content text ``t<ns>``: time.monotonic_ns()
when the engine wrote it (CLOCK_MONOTONIC, comparable across processes on one machine).
POST /v1/chat/completions with ``"stream": true``; request headers:

  x-bench-chunks  the stream's content chunks, one per step (its max steps; default 100)

A stream is on the wire as vLLM sends it (tests/support/vllm_chunks.py): response headers at
once; at its first step the role chunk and the first content chunk; one content chunk a step;
then, at the step after the last (the stop token's, whose text is empty), the finish chunk, the
usage chunk when stream_options.include_usage (the stop token counted, as vLLM counts it), and
data: [DONE]. The connection stays open for the client's next request.

Run: python benchmarks/engine_upstream.py [--port 0] [--interval-ms 10]  (prints ``PORT <n>``)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from fast_upstream import (
    _DONE_FRAME,
    _FINISH_FRAME,
    _MAX_CHUNKS,
    _ROLE_FRAME,
    _SSE_HEAD,
    _USAGE_ONLY,
    _Connection,
    _frame,
    _header_number,
    _with_usage,
    chunk,
    raise_fd_limit,
)

from metrics_proxy.simulator.openai_shapes import stream_choice, template

# A content chunk whose text is a %d: the engine's clock when it wrote it.
_STAMPED = template(chunk([stream_choice(0, True, "t%d", None)]))


@dataclass
class _Stream:
    transport: asyncio.Transport
    left: int  # content chunks still to send; at 0, the next step finishes the stream
    chunks: int
    usage: bool
    done: asyncio.Future[None]
    begun: bool = False  # the role chunk went out (with the first content chunk)


class Engine:
    """The step loop: every interval, one stamped chunk to each open stream."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams: list[_Stream] = []

    async def run(self) -> None:
        step = time.monotonic()
        while True:
            step += self.interval
            delay = step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:  # late (the core was busy): step now, keep the schedule from here
                step = time.monotonic()
                await asyncio.sleep(0)
            self.step()

    def step(self) -> None:
        still = []
        for stream in self.streams:
            transport = stream.transport
            if transport.is_closing():
                if not stream.done.done():
                    stream.done.set_result(None)
                continue
            if stream.left > 0:
                chunk = _frame(_STAMPED % time.monotonic_ns())
                transport.write(chunk if stream.begun else _ROLE_FRAME + chunk)
                stream.begun = True
                stream.left -= 1
                still.append(stream)
                continue
            # The stop token's step: its text is empty, usage counts it.
            ending = _FINISH_FRAME
            if stream.usage:
                ending += _with_usage(_USAGE_ONLY, stream.chunks + 1)
            transport.write(ending + _DONE_FRAME)
            if not stream.done.done():
                stream.done.set_result(None)
        self.streams = still


ENGINE = Engine(0.01)


class _EngineConnection(_Connection):
    async def _stream(self, request: dict[str, Any], headers: dict[bytes, bytes]) -> None:
        transport = self._transport
        assert transport is not None
        chunks = int(min(max(_header_number(headers, b"x-bench-chunks", 100), 1), _MAX_CHUNKS))
        options = request.get("stream_options")
        options = options if type(options) is dict else {}
        usage = options.get("include_usage") is True
        done = asyncio.get_running_loop().create_future()
        try:
            transport.write(_SSE_HEAD)
            ENGINE.streams.append(_Stream(transport, chunks, chunks, usage, done))
            await done
        except asyncio.CancelledError:
            return
        self._busy = False
        self._task = None
        if self._buffer:
            self._serve()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EngineConnection, host, port, backlog=4096)
    engine = loop.create_task(ENGINE.run())
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    try:
        async with server:
            await server.serve_forever()
    finally:
        engine.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    args = parser.parse_args()
    ENGINE.interval = max(args.interval_ms, 0.1) / 1000
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
