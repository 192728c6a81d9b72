"""WebSocket upgrades (vLLM's /v1/realtime) pass through both ways, unmetered."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.stack import Stack, StackFactory


async def test_a_realtime_websocket_passes_through_both_ways(stack: Stack) -> None:
    async with stack.client.ws_connect("/v1/realtime?model=m", protocols=("realtime",)) as ws:
        assert ws.protocol == "realtime"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"echo:\x00\x01"
    (seen,) = stack.state.requests
    assert seen.path == "/v1/realtime?model=m"
    # No HTTP exchange for the http_* series, no request for the vLLM ones.
    http = (await stack.snapshot())["http_requests_total"]["samples"]
    assert all(sample["labels"]["handler"] != "/v1/realtime" for sample in http), http
    assert await stack.gauges() == (0, 0)


async def test_the_upstream_key_goes_with_the_websocket(make_stack: StackFactory) -> None:
    stack = await make_stack(upstream_api_key="sk-up", api_key="client")
    headers = {"Authorization": "Bearer client"}
    async with stack.client.ws_connect("/v1/realtime", headers=headers) as ws:
        await ws.send_str("x")
        assert await ws.receive_str(timeout=5) == "echo:x"
    (seen,) = stack.state.requests
    assert seen.headers["Authorization"] == "Bearer sk-up"


async def test_a_websocket_without_the_api_key_is_refused(make_stack: StackFactory) -> None:
    stack = await make_stack(api_key="client")
    response = await stack.client.get(
        "/v1/realtime", headers={"Connection": "Upgrade", "Upgrade": "websocket"}
    )
    assert response.status == 401
    assert stack.state.requests == []


async def test_an_upstream_that_refuses_the_upgrade_is_502(stack: Stack) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await stack.client.ws_connect("/v1/models")
    assert refused.value.status == 502


async def test_an_upstream_silent_on_the_handshake_is_504_in_time(
    make_stack: StackFactory,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads the upgrade, answers nothing, until the proxy leaves
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        stack = await make_stack(upstream_url=f"http://127.0.0.1:{port}", connect_timeout=0.3)
        async with asyncio.timeout(5):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await stack.client.ws_connect("/v1/realtime")
        assert refused.value.status == 504
    finally:
        server.close()
        await server.wait_closed()
