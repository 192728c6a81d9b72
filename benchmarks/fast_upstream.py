"""A cheap fake vLLM for the proxy benchmark: raw asyncio, HTTP/1.1 keep-alive, loopback only.

GET /v1/models lists the one model, "bench". POST /v1/chat/completions (or /v1/completions)
answers a fixed small JSON body, or with ``"stream": true`` a vLLM-shaped event stream: a role
chunk, N content chunks, a finish chunk, a usage chunk when ``stream_options.include_usage``
(usage on every chunk as well with ``continuous_usage_stats``) and ``data: [DONE]``, each event
its own chunked-encoding frame, written as fast as the connection takes them. The chunks are
the simulated vLLM's (metrics_proxy.simulator.openai_shapes), built once at import: a chunk
costs a write, or one %-format where it carries usage. Request headers shape a stream:

  x-bench-chunks    content chunks (default 200)
  x-bench-delay-ms  wait before the first content chunk (response headers go out at once)
  x-bench-interval-ms  wait between content chunks (default 0: only a turn of the loop)
  x-bench-hold-s    after the first content chunk, hold the stream this long (bounded)

Run: python benchmarks/fast_upstream.py [--port 0]   (prints ``PORT <n>`` once listening)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
from typing import Any

import orjson

from metrics_proxy.simulator import openai_shapes as shapes

_MAX_CHUNKS = 100_000
_MAX_HOLD = 120.0
_PROMPT_TOKENS = 10

_ID, _MODEL = "chatcmpl-bench", "bench"


def chunk(choices: list[Any], with_usage: bool = False) -> dict[str, Any]:
    """A chat stream chunk as vLLM writes it (the simulator's builders), with a usage member
    of %d marks for ``template`` when ``with_usage``."""
    obj = shapes.envelope(True, shapes.chunk_kind(True), _MODEL, choices, answer_id=_ID)
    if with_usage:
        obj["usage"] = {name: "%d" for name in shapes.usage(0, 0)}
    return obj


_ANSWER = shapes.answer_choice(0, True, "Hello from the fast upstream.", "stop")
_ANSWER["stop_reason"] = None  # vLLM's, after finish_reason
_BODY = orjson.dumps(
    shapes.envelope(True, "chat.completion", _MODEL, [_ANSWER], answer_id=_ID)
    | {"usage": shapes.usage(_PROMPT_TOKENS, 7)}
)
_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(_BODY)
)
_NOT_FOUND = b'{"error": "not found"}'
_NOT_FOUND_RESPONSE = (
    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_NOT_FOUND), _NOT_FOUND)
)
# GET /v1/models: the one model it serves, as vLLM lists it (--model-name auto reads it).
_MODELS = orjson.dumps({"object": "list", "data": [{"id": _MODEL, "object": "model"}]})
_MODELS_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
    % (len(_MODELS), _MODELS)
)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_ROLE = [shapes.role_choice(0)]
_CONTENT = [shapes.stream_choice(0, True, " tok", None)]
_FINISH = [shapes.finish_choice(0, True, "", "stop")]
# Built once: a stream's every frame is a constant, or a %-template when it carries usage.
_ROLE_USAGE, _CONTENT_USAGE, _FINISH_USAGE, _USAGE_ONLY = (
    shapes.template(chunk(choices, with_usage=True)) for choices in (_ROLE, _CONTENT, _FINISH, [])
)


def _frame(data: bytes) -> bytes:
    """One SSE event as one chunked-encoding frame."""
    event = b"data: " + data + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


_ROLE_FRAME, _CONTENT_FRAME, _FINISH_FRAME = (
    _frame(orjson.dumps(chunk(choices))) for choices in (_ROLE, _CONTENT, _FINISH)
)
_DONE_FRAME = _frame(b"[DONE]") + b"0\r\n\r\n"


def _with_usage(usage_template: bytes, completion: int) -> bytes:
    return _frame(usage_template % (_PROMPT_TOKENS, _PROMPT_TOKENS + completion, completion))


def _header_number(headers: dict[bytes, bytes], name: bytes, default: float) -> float:
    try:
        return float(headers.get(name, default))
    except ValueError:
        return default


class _Connection(asyncio.Protocol):
    """One client connection: requests in order, one at a time (no pipelining needed)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._busy = False
        self._closed = False
        self._paused = False
        self._resumed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._wake()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    def _wake(self) -> None:
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._busy:
            self._serve()

    def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        while not self._busy and not self._closed:
            buffer = self._buffer
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            parts = lines[0].split(b" ")
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            total = end + 4 + int(headers.get(b"content-length", b"0"))
            if len(buffer) < total:
                return
            body = bytes(buffer[end + 4 : total])
            del buffer[:total]
            if parts[:2] == [b"GET", b"/v1/models"]:
                transport.write(_MODELS_RESPONSE)
                continue
            if len(parts) < 2 or parts[0] != b"POST" or not parts[1].endswith(b"completions"):
                transport.write(_NOT_FOUND_RESPONSE)
                continue
            request: Any = orjson.loads(body) if body else {}
            if type(request) is not dict or request.get("stream") is not True:
                transport.write(_JSON_HEAD + _BODY)
                continue
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._stream(request, headers))

    async def _drain(self) -> None:
        if self._paused and not self._closed:
            self._resumed = asyncio.get_running_loop().create_future()
            await self._resumed

    async def _stream(self, request: dict[str, Any], headers: dict[bytes, bytes]) -> None:
        transport = self._transport
        assert transport is not None
        chunks = int(min(max(_header_number(headers, b"x-bench-chunks", 200), 0), _MAX_CHUNKS))
        delay = _header_number(headers, b"x-bench-delay-ms", 0) / 1000
        interval = _header_number(headers, b"x-bench-interval-ms", 0) / 1000
        hold = min(_header_number(headers, b"x-bench-hold-s", 0), _MAX_HOLD)
        options = request.get("stream_options")
        options = options if type(options) is dict else {}
        usage = options.get("include_usage") is True
        continuous = usage and options.get("continuous_usage_stats") is True
        try:
            transport.write(_SSE_HEAD)
            if delay > 0:
                await asyncio.sleep(delay)
            transport.write(_with_usage(_ROLE_USAGE, 0) if continuous else _ROLE_FRAME)
            for i in range(1, chunks + 1):
                transport.write(_with_usage(_CONTENT_USAGE, i) if continuous else _CONTENT_FRAME)
                if i == 1 and hold > 0:
                    await asyncio.sleep(hold)
                # Every stream gets its turn, as every running request gets a token per step.
                await asyncio.sleep(interval)
                await self._drain()
                if self._closed:
                    return
            transport.write(_with_usage(_FINISH_USAGE, chunks) if continuous else _FINISH_FRAME)
            if usage:
                transport.write(_with_usage(_USAGE_ONLY, chunks))
            transport.write(_DONE_FRAME)
        except asyncio.CancelledError:
            return
        self._busy = False
        self._task = None
        if self._buffer:
            self._serve()


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Connection, host, port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: thousands of held streams need fds."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
