"""The upstream end: one request to it, with every timeout explicit, the write one included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiohttp
from aiohttp import StreamReader, web
from multidict import CIMultiDict
from yarl import URL

from metrics_proxy.config import Config, seconds_or_none
from metrics_proxy.headers import request_headers
from metrics_proxy.resend import ResendIfClosedUnanswered


def client_timeout(config: Config) -> aiohttp.ClientTimeout:
    """aiohttp's timeouts from ours; every limit is explicit, so aiohttp's own defaults (a
    300 s total) never cap a request: connect covers DNS + TCP + TLS, sock_read is the
    longest silence between upstream bytes, total is the whole exchange."""
    return aiohttp.ClientTimeout(
        total=seconds_or_none(config.request_timeout),
        connect=seconds_or_none(config.connect_timeout),
        sock_connect=seconds_or_none(config.connect_timeout),
        sock_read=seconds_or_none(config.read_timeout),
    )


# aiohttp's StreamWriter waits for the socket to drain only past 64 KiB of buffered output.
_UNDRAINED_WRITE = 0x10000


class Upstream:
    """Opens requests to the upstream on the app's one ClientSession."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        self._base = config.upstream_url
        self._session = session
        self._timeout = client_timeout(config)
        self._write_timeout = seconds_or_none(config.write_timeout)
        # vLLM started with --api-key wants this on every request; it replaces the client's.
        self._authorization = f"Bearer {config.upstream_api_key}" if config.upstream_api_key else ""

    def _request(
        self, request: web.Request, headers: CIMultiDict[str], data: object
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self._session.request(
            request.method,
            # rel_url: an absolute-form target (a client taking us for a forward proxy) keeps
            # only its path and query; the upstream is always ours.
            URL(self._base + request.rel_url.raw_path_qs, encoded=True),
            headers=headers,
            data=data,
            timeout=self._timeout,
            allow_redirects=False,  # redirects are the client's to follow, as without a proxy
        )

    def open(
        self, request: web.Request, body: bytes | StreamReader | None, *, metered: bool = False
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The upstream's response, its headers received.

        Sending the body is bounded by the write timeout, which aiohttp lacks. A body of at
        most 64 KiB (nearly every completion request) is handed to aiohttp as is: aiohttp
        writes that much without waiting for the socket, so there is no write to time. A
        larger or streamed body goes out through a generator that arms a deadline before
        each write and disarms it once aiohttp asks for more.

        A body in hand (a metered request's bytes) goes out once more if the pooled
        connection it was sent on closed before any answer (resend.py).
        """
        if isinstance(body, bytes):
            return ResendIfClosedUnanswered(lambda: self._open_once(request, body, metered))
        return self._open_once(request, body, metered)

    def _open_once(
        self, request: web.Request, body: bytes | StreamReader | None, metered: bool
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        headers = request_headers(request.headers)
        if metered:
            # The proxy reads these responses to meter them: they must come uncompressed.
            headers["Accept-Encoding"] = "identity"
        if self._authorization:
            headers["Authorization"] = self._authorization
        if body is None or (isinstance(body, bytes) and len(body) <= _UNDRAINED_WRITE):
            return self._request(request, headers, body)
        # Keep the client's framing (no switch to chunked for a streamed body).
        length = len(body) if isinstance(body, bytes) else request.content_length
        if length is not None:
            headers["Content-Length"] = str(length)
        return self._open_paced(request, headers, body)

    @asynccontextmanager
    async def _open_paced(
        self, request: web.Request, headers: CIMultiDict[str], body: bytes | StreamReader
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        async with asyncio.timeout(None) as timeout:
            deadline = _WriteDeadline(timeout, self._write_timeout)
            # A generator for large bytes too: aiohttp warns about (and blocks on) those.
            async with self._request(request, headers, _paced(body, deadline)) as upstream:
                deadline.answered()  # whatever the upstream read was enough
                yield upstream


class _WriteDeadline:
    """The write timeout of one paced body: armed before each piece, disarmed after. Once
    the upstream has answered it stays off for good, although aiohttp's body writer may
    still be running: it must never cut a response that is being relayed."""

    __slots__ = ("_done", "_seconds", "_timeout")

    def __init__(self, timeout: asyncio.Timeout, seconds: float | None) -> None:
        self._timeout = timeout
        self._seconds = seconds
        self._done = seconds is None

    def arm(self) -> None:
        if not self._done:
            assert self._seconds is not None
            self._timeout.reschedule(asyncio.get_running_loop().time() + self._seconds)

    def disarm(self) -> None:
        if not self._done:
            self._timeout.reschedule(None)

    def answered(self) -> None:
        self.disarm()
        self._done = True


async def _paced(body: bytes | StreamReader, deadline: _WriteDeadline) -> AsyncIterator[bytes]:
    """Hand the body to aiohttp piece by piece; aiohttp resumes this generator only once the
    previous piece is written and drained, so the deadline covers exactly the writing."""
    if isinstance(body, bytes):
        deadline.arm()
        yield body
        deadline.disarm()
        return
    async for piece in body.iter_any():
        deadline.arm()
        yield piece
        deadline.disarm()
