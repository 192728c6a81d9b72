"""Every request bound for the upstream has an id: the client's X-Request-Id when it is sane,
else a new one; it goes upstream, back to the client, and into the request's log line."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from tests.support.stack import Stack

CHAT = "/v1/chat/completions"
BODY = b'{"messages": [], "stream": true}'
GENERATED = re.compile(r"[0-9a-f]{24}")


def _logged_ids(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "metrics_proxy"]
    return [found[1] for line in lines if (found := re.search(r" request_id=(\S+)", line))]


@pytest.mark.parametrize(("method", "path"), [("POST", CHAT), ("GET", "/v1/models")])
async def test_a_request_without_an_id_gets_a_new_one_everywhere(
    stack: Stack, caplog: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    response = await stack.client.request(method, path, data=BODY if method == "POST" else None)
    assert response.status == 200
    await response.read()
    (seen,) = stack.state.requests
    request_id = seen.headers["X-Request-Id"]
    assert GENERATED.fullmatch(request_id)
    assert response.headers["X-Request-Id"] == request_id
    if method == "POST":  # a forwarded request that succeeds has no line of its own
        assert _logged_ids(caplog) == [request_id]


async def test_each_request_gets_an_id_of_its_own(stack: Stack) -> None:
    for _ in range(2):
        async with stack.client.post(CHAT, data=BODY) as response:
            await response.read()
    ids = {seen.headers["X-Request-Id"] for seen in stack.state.requests}
    assert len(ids) == 2


@pytest.mark.parametrize("given", ["req-42", "x" * 128, "a:b/c=d_e.f~!"])
async def test_a_sane_client_id_is_kept_as_it_is(
    stack: Stack, caplog: pytest.LogCaptureFixture, given: str
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    async with stack.client.post(CHAT, data=BODY, headers={"X-Request-Id": given}) as response:
        await response.read()
    (seen,) = stack.state.requests
    assert seen.headers["X-Request-Id"] == given
    assert response.headers["X-Request-Id"] == given
    assert _logged_ids(caplog) == [given]


@pytest.mark.parametrize(
    "given",
    [b"x" * 129, b"two words", b"tab\there", b"caf\xc3\xa9", b"\xff\xfe", b""],
    ids=["too-long", "space", "tab", "utf-8", "not-utf-8", "empty"],
)
async def test_an_insane_client_id_is_replaced(
    stack: Stack, caplog: pytest.LogCaptureFixture, given: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    server = stack.client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(
            b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"X-Request-Id: " + given + b"\r\n"
            b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
        )
        async with asyncio.timeout(10):
            answer = await reader.read()
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ")
    (seen,) = stack.state.requests
    request_id = seen.headers["X-Request-Id"]
    assert GENERATED.fullmatch(request_id)
    head = answer.partition(b"\r\n\r\n")[0].decode().lower()
    assert f"\r\nx-request-id: {request_id}\r\n" in head + "\r\n"
    assert _logged_ids(caplog) == [request_id]


async def test_the_client_gets_the_id_unless_the_upstream_answers_with_its_own(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    aiohttp_client: Callable[..., Awaitable[TestClient[web.Request, web.Application]]],
) -> None:
    async def own_id(request: web.Request) -> web.Response:
        return web.json_response({}, headers={"X-Request-Id": "engine-7"})

    async def no_id(request: web.Request) -> web.Response:
        return web.json_response({})

    upstream = web.Application()
    upstream.router.add_get("/own-id", own_id)
    upstream.router.add_get("/no-id", no_id)
    server = await aiohttp_server(upstream)
    config = Config(upstream_url=str(server.make_url("")), model_name="m")
    client = await aiohttp_client(create_app(config))
    async with client.get("/own-id", headers={"X-Request-Id": "mine"}) as response:
        assert response.headers.getall("X-Request-Id") == ["engine-7"]
    async with client.get("/no-id", headers={"X-Request-Id": "mine"}) as response:
        assert response.headers.getall("X-Request-Id") == ["mine"]
