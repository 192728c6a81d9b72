"""The one copy loop: an upstream body to the client, as it arrives, through a filter."""

from __future__ import annotations

from typing import Protocol

import aiohttp
from aiohttp import web

from metrics_proxy.client_io import ClientGone


class BodyFilter(Protocol):
    """What passes between the upstream's bytes and the client: the same bytes, or the
    bytes a meter lets through. ``stopped`` ends the copy early (the upstream is then let go)."""

    @property
    def stopped(self) -> bool: ...

    def feed(self, chunk: bytes) -> bytes: ...


class PassThrough:
    """Every byte as it came."""

    __slots__ = ()
    stopped = False

    def feed(self, chunk: bytes) -> bytes:
        return chunk


PASS_THROUGH = PassThrough()


async def relay(
    source: aiohttp.StreamReader, response: web.StreamResponse, body_filter: BodyFilter
) -> None:
    """Copy ``source`` to ``response`` until it ends or the filter stops.

    An upstream failure propagates as aiohttp raised it (TimeoutError, aiohttp.ClientError),
    for the caller to end the response as its kind of body must end; a client that is gone
    raises ClientGone.
    """
    feed = body_filter.feed
    write = response.write
    try:
        async for chunk in source.iter_any():
            out = feed(chunk)
            if out:
                await write(out)
            if body_filter.stopped:
                return
    except ConnectionResetError:
        raise ClientGone from None
