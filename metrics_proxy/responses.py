"""Answers the proxy makes itself, and the ways a response can end badly."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from metrics_proxy.errors import error_body

JSON = "application/json"


class ClientGone(ConnectionError):
    """The client closed its connection while the proxy was answering it."""


@dataclass(frozen=True, slots=True)
class UpstreamFailure:
    """How an upstream failure maps to an answer and an error kind, in one place."""

    kind: str
    status: int
    message: str

    @staticmethod
    def of(exc: BaseException) -> UpstreamFailure:
        # Order matters: aiohttp's connect timeout is both a connector error and a TimeoutError.
        if isinstance(exc, TimeoutError):
            return UpstreamFailure("timeout", 504, "Upstream timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return UpstreamFailure("connect", 502, f"Upstream unreachable: {exc.os_error}")
        return UpstreamFailure("upstream_disconnect", 502, f"Upstream failed: {type(exc).__name__}")

    def response(self) -> web.Response:
        error_type = "upstream_timeout" if self.status == 504 else "upstream_error"
        return json_error(self.status, self.message, error_type)


def json_error(status: int, message: str, error_type: str) -> web.Response:
    return web.Response(
        status=status, body=error_body(message, error_type, status), content_type=JSON
    )


def body_too_slow(request: web.Request, response: web.StreamResponse | None) -> web.StreamResponse:
    """The client did not send its body in time: 408 while that can still be said, a cut
    connection once the response has begun."""
    if response is not None and response.prepared:
        abort_connection(request)
        return response
    late = json_error(408, "The request body did not arrive in time", "invalid_request_error")
    late.force_close()  # the rest of the body may still come: drop the connection
    return late


async def write_guard(write: Awaitable[object]) -> None:
    """Await a write to the client, turning its failure into ClientGone."""
    try:
        await write
    except ConnectionResetError:
        raise ClientGone from None


def abort_connection(request: web.Request) -> None:
    """Cut the client's connection: a body cut short must not look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()
