"""No 502 after an idle spell: pooled upstream connections leave the pool before the upstream
closes them, tested against a raw loopback upstream that closes idle connections as uvicorn
(vLLM's server) does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from conftest import Stack, StackFactory

CHAT = "/v1/chat/completions"


@dataclass(eq=False)
class KeepAliveUpstream:
    """HTTP/1.1 with keep-alive, closing a connection after `idle` seconds without a request.

    Every request body is `{"user": ID, ...}`; the answer is a completion named after it.
    """

    idle: float
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
            while await self._next_request(reader, writer):
                pass
        finally:
            writer.close()
            self._notify()

    async def _next_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            async with asyncio.timeout(self.idle):
                head = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            self.closed_by.append("upstream")
            return False
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by.append("proxy")
            return False
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        request_id = orjson.loads(await reader.readexactly(length))["user"]
        self.received.append(request_id)
        self._notify()
        writer.write(_completion(request_id))
        await writer.drain()
        self.answered.append(request_id)
        return True


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


async def ask(stack: Stack, request_id: str) -> str:
    body = orjson.dumps({"model": "m", "messages": [], "user": request_id})
    response = await stack.client.post(CHAT, data=body)
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
