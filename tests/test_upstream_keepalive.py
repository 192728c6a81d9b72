"""No 502 after an idle spell: pooled upstream connections leave the pool before the upstream
closes them, and a completion sent on one the upstream closed unanswered goes out once more.
Tested against a raw loopback upstream that closes idle connections as uvicorn (vLLM's
server) does, and that can close one exactly as a request arrives on it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"


@dataclass(eq=False)
class KeepAliveUpstream:
    """HTTP/1.1 with keep-alive, closing a connection after `idle` seconds without a request.

    Every request body is `{"user": ID, ...}`; the answer is a completion named after it. With
    `drop` = N, the Nth request on a connection (once, on one connection) is read and left
    unanswered, its connection closed after `reply_before_close`: with N = 2, the upstream's
    idle close racing the proxy's next request on that connection, made deterministic.
    """

    idle: float
    drop: int | None = None
    reply_before_close: bytes = b""
    work_before_close: float = 0.0  # seconds the dropped request is "run" before the close
    url: str = ""
    received: list[str] = field(default_factory=list)  # request ids, as they arrived
    answered: list[str] = field(default_factory=list)
    closed_by: list[str] = field(default_factory=list)  # "upstream" (idle) or "proxy"
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            on_this_connection = 0
            while (request_id := await self._next_request(reader)) is not None:
                on_this_connection += 1
                if on_this_connection == self.drop:
                    self.drop = None
                    await asyncio.sleep(self.work_before_close)
                    writer.write(self.reply_before_close)
                    await writer.drain()
                    return
                writer.write(_completion(request_id))
                await writer.drain()
                self.answered.append(request_id)
        finally:
            writer.close()
            self._notify()

    async def _next_request(self, reader: asyncio.StreamReader) -> str | None:
        try:
            async with asyncio.timeout(self.idle):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self.closed_by.append("upstream")
            return None
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by.append("proxy")
            return None
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        request_id = str(orjson.loads(await reader.readexactly(length))["user"])
        self.received.append(request_id)
        self._notify()
        return request_id


def _completion(request_id: str) -> bytes:
    body = orjson.dumps(
        {
            "id": f"chatcmpl-{request_id}",
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "total_tokens": 5, "completion_tokens": 2},
        }
    )
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


StartUpstream = Callable[..., Awaitable[KeepAliveUpstream]]


@pytest.fixture
async def start_upstream() -> AsyncIterator[StartUpstream]:
    """Start KeepAliveUpstreams on loopback; they stop with the test."""
    servers: list[asyncio.Server] = []

    async def start(**options: Any) -> KeepAliveUpstream:
        upstream = KeepAliveUpstream(**options)
        server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
        upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        servers.append(server)
        return upstream

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def post(
    stack: Stack, request_id: str, path: str = CHAT, pad: int = 0
) -> aiohttp.ClientResponse:
    body = orjson.dumps({"model": "m", "messages": [], "user": request_id, "pad": "x" * pad})
    async with asyncio.timeout(10):
        return await stack.client.post(path, data=body)


async def ask(stack: Stack, request_id: str, pad: int = 0) -> str:
    response = await post(stack, request_id, pad=pad)
    assert response.status == 200, await response.text()
    return str((await response.json())["id"])


async def test_idle_connections_leave_the_pool_before_the_upstream_closes_them(
    make_stack: StackFactory, start_upstream: StartUpstream
) -> None:
    upstream = await start_upstream(idle=1.0)
    stack = await make_stack(upstream_url=upstream.url, upstream_keepalive_timeout=0.1)
    assert await ask(stack, "a") == "chatcmpl-a"
    # The idle spell: the proxy lets the connection go first, so none can close under a request.
    await upstream.wait_until(lambda: bool(upstream.closed_by))
    assert upstream.closed_by == ["proxy"]
    assert await ask(stack, "b") == "chatcmpl-b"
    assert upstream.answered == ["a", "b"]


# A body past 64 KiB goes out through the write-timed generator: made anew for the resend.
@pytest.mark.parametrize("pad", [0, 200_000], ids=["small", "large"])
async def test_a_request_the_upstream_closed_its_connection_on_is_sent_once_more(
    make_stack: StackFactory, start_upstream: StartUpstream, pad: int
) -> None:
    upstream = await start_upstream(idle=5.0, drop=2)
    stack = await make_stack(upstream_url=upstream.url)
    assert await ask(stack, "a") == "chatcmpl-a"
    # On a's connection, which the upstream closes unanswered; then on a new one.
    assert await ask(stack, "b", pad) == "chatcmpl-b"
    assert upstream.received == ["a", "b", "b"]
    assert upstream.answered == ["a", "b"]  # every request answered once, none twice
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 2
    assert await stack.value("vllm:prompt_tokens_total") == 6
    errors = (await stack.snapshot())["proxy_errors_total"]["samples"]
    assert sum(sample["value"] for sample in errors) == 0
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize(
    ("drop", "reply_before_close", "path", "work"),
    [
        # part of an answer came: the upstream had the request
        (2, b"HTTP/1.1 200 OK\r\nContent-", CHAT, 0.0),
        # a new connection closing is the upstream failing, not a race
        (1, b"", CHAT, 0.0),
        # a body streamed through cannot be sent again
        (2, b"", "/tokenize", 0.0),
        # closed long after it was sent: the upstream may have been running it (a crash, a
        # load balancer's timeout), so it must not run twice
        (2, b"", CHAT, 0.5),
    ],
    ids=["answer-begun", "new-connection", "streamed-body", "closed-while-running"],
)
async def test_a_request_that_may_have_been_taken_is_not_sent_again(
    make_stack: StackFactory,
    start_upstream: StartUpstream,
    drop: int,
    reply_before_close: bytes,
    path: str,
    work: float,
) -> None:
    upstream = await start_upstream(
        idle=5.0, drop=drop, reply_before_close=reply_before_close, work_before_close=work
    )
    stack = await make_stack(upstream_url=upstream.url)
    ids = ["a", "b"][: drop - 1]
    for request_id in ids:
        assert await ask(stack, request_id) == f"chatcmpl-{request_id}"
    response = await post(stack, "x", path)
    assert response.status == 502
    assert (await response.json())["error"]["code"] == 502
    assert upstream.received == [*ids, "x"]
    assert await stack.gauges() == (0, 0)
