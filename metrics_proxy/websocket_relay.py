"""WebSocket upgrades (vLLM's ``/v1/realtime``): passed through both ways, unmetered.

``Upgrade`` is hop-by-hop, so a plain forward would drop it and the handshake would fail; the
proxy instead accepts the client's WebSocket, opens one to the upstream with the same path,
query, subprotocols and end-to-end headers, and relays messages until either side closes.
"""

from __future__ import annotations

import asyncio
from typing import Final

import aiohttp
from aiohttp import web
from yarl import URL

from metrics_proxy.headers import request_headers

# Set by the WebSocket handshake itself (RFC 6455 §4.1), on each leg for its own peer.
_HANDSHAKE: Final = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
    }
)


def is_websocket_upgrade(request: web.Request) -> bool:
    connection = request.headers.get("Connection", "").lower()
    upgrade = request.headers.get("Upgrade", "").lower()
    return upgrade == "websocket" and "upgrade" in connection


async def relay_websocket(
    request: web.Request,
    session: aiohttp.ClientSession,
    upstream_url: URL,
    authorization: str,
    connect_timeout: float | None,
) -> web.StreamResponse:
    """Open the upstream WebSocket first (so a refusal reaches the client as the upstream's
    HTTP answer would: 502), then accept the client's and pump both ways."""
    headers = request_headers(request.headers)
    for name in _HANDSHAKE:
        headers.popall(name, None)
    if authorization:
        headers["Authorization"] = authorization
    protocols = tuple(
        p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()
    )
    # The handshake is bounded like any connect (the session itself sets no total).
    async with asyncio.timeout(connect_timeout):
        upstream = await session.ws_connect(
            upstream_url, headers=headers, protocols=protocols, autoping=True
        )
    async with upstream:
        # The client gets the subprotocol the upstream chose, not one of its own offers.
        chosen = (upstream.protocol,) if upstream.protocol else ()
        client = web.WebSocketResponse(protocols=chosen, autoping=True)
        await client.prepare(request)
        pumps = (
            asyncio.ensure_future(_pump(client, upstream)),
            asyncio.ensure_future(_pump(upstream, client)),
        )
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            await client.close()
        return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy text and binary messages from source to sink until source closes."""
    async for message in source:
        if message.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        else:  # close, closing or error: this direction is done
            break
    await sink.close()
