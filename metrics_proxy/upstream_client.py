"""The upstream end: one request to it, with every timeout explicit, the write one included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Protocol

import aiohttp
from aiohttp import StreamReader, web
from multidict import CIMultiDict
from yarl import URL

from metrics_proxy import request_ids
from metrics_proxy.config import Config, seconds_or_none
from metrics_proxy.errors import UpstreamWriteTimeout
from metrics_proxy.headers import request_headers
from metrics_proxy.resend import ResendIfClosedUnanswered
from metrics_proxy.setting_rules import split_credentials
from metrics_proxy.websocket_relay import relay_websocket


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


# The headers aiohttp would add to a request of its own accord (and a body's Content-Type):
# none is added, the upstream gets the client's alone.
NOT_ADDED = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NOT_ADDED_TABLE: CIMultiDict[None] = CIMultiDict((name, None) for name in NOT_ADDED)


class _RequestAsSent(aiohttp.ClientRequest):
    """A ClientRequest that adds none of NOT_ADDED, whose table aiohttp would otherwise
    build anew for every request from the session's skip_auto_headers (sorted, copied,
    merged with the headers): here it is built once. aiohttp adds no other header."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _NOT_ADDED_TABLE  # read where a body's headers are added


def request_class() -> type[aiohttp.ClientRequest]:
    """The session's request class: aiohttp before 3.12 keeps that table under another
    name, and builds it for every request as it always did."""
    if hasattr(aiohttp.ClientRequest, "_skip_auto_headers"):
        return _RequestAsSent
    return aiohttp.ClientRequest


# aiohttp's StreamWriter waits for the socket to drain only past 64 KiB of buffered output.
_UNDRAINED_WRITE = 0x10000


class ReadBody(Protocol):
    """A client's body that the proxy reads on its way upstream, piece by piece as it comes
    (b"" at its end). ``reframed``: the proxy may change its length, so it goes chunked
    rather than under the client's Content-Length."""

    reframed: bool

    async def readany(self) -> bytes: ...


StreamedBody = StreamReader | ReadBody


class Upstream:
    """Opens requests to the upstream on the app's one ClientSession."""

    def __init__(self, config: Config, session: aiohttp.ClientSession) -> None:
        # Credentials in the URL go as a header: aiohttp refuses them beside a client's
        # Authorization, and a URL is logged.
        self._base, basic = split_credentials(config.upstream_url)
        self._session = session
        self._timeout = client_timeout(config)
        self._write_timeout = seconds_or_none(config.write_timeout)
        self._client_timeout = seconds_or_none(config.client_timeout)
        # vLLM started with --api-key wants this on every request; it replaces the client's.
        key = config.upstream_api_key
        self._authorization = f"Bearer {key}" if key else basic or ""

    def get(self, path: str) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The proxy's own GET of the upstream's ``path`` (no client's request), with the
        upstream's key and the same timeouts as a client's request."""
        headers = {"Authorization": self._authorization} if self._authorization else {}
        return self._session.get(
            self._base + path, headers=headers, timeout=self._timeout, allow_redirects=False
        )

    def url_for(self, request: web.Request) -> URL:
        # rel_url: an absolute-form target (a client taking us for a forward proxy) keeps
        # only its path and query; the upstream is always ours.
        return URL(self._base + request.rel_url.raw_path_qs, encoded=True)

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """Relay a WebSocket upgrade to the same path upstream."""
        return await relay_websocket(
            request,
            self._session,
            self.url_for(request),
            self._authorization,
            self._timeout.connect,
        )

    def _request(
        self, request: web.Request, headers: CIMultiDict[str], data: object
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self._session.request(
            request.method,
            self.url_for(request),
            headers=headers,
            data=data,
            timeout=self._timeout,
            allow_redirects=False,  # redirects are the client's to follow, as without a proxy
        )

    def open(
        self, request: web.Request, body: bytes | StreamedBody | None, *, metered: bool = False
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """The upstream's response, its headers received.

        Sending the body is bounded by the write timeout, which aiohttp lacks. A body of at
        most 64 KiB (nearly every completion request) is handed to aiohttp as is: aiohttp
        writes that much without waiting for the socket, so there is no write to time. A
        larger or streamed body goes out through a generator that re-arms one deadline at
        each step: the write timeout while aiohttp writes a piece, the client timeout while
        the client's next piece is awaited (ClientBodyTimeout when it does not come).

        A body in hand (a metered request's bytes) goes out once more if the pooled
        connection it was sent on closed before any answer (resend.py).
        """
        if isinstance(body, bytes):
            return ResendIfClosedUnanswered(partial(self._open_once, request, body, metered))
        return self._open_once(request, body, metered)

    def _open_once(
        self, request: web.Request, body: bytes | StreamedBody | None, metered: bool
    ) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        headers = request_headers(request.headers)
        if metered:
            # The proxy reads these responses to meter them: they must come uncompressed.
            headers["Accept-Encoding"] = "identity"
        if self._authorization:
            headers["Authorization"] = self._authorization
        request_id = request_ids.current()
        if request_id is not None:
            headers[request_ids.HEADER] = request_id  # vLLM's own id for the request
        if body is None or (isinstance(body, bytes) and len(body) <= _UNDRAINED_WRITE):
            return self._request(request, headers, body)
        # Keep the client's framing (no switch to chunked for a streamed body), unless the
        # proxy changes the body's length on the way.
        if isinstance(body, bytes):
            length: int | None = len(body)
        elif isinstance(body, StreamReader) or not body.reframed:
            length = request.content_length
        else:
            length = None
        if length is not None:
            headers["Content-Length"] = str(length)
        return self._open_paced(request, headers, body, metered)

    @asynccontextmanager
    async def _open_paced(
        self,
        request: web.Request,
        headers: CIMultiDict[str],
        body: bytes | StreamedBody,
        metered: bool,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        timeout = asyncio.timeout(None)
        # A metered body streamed through (a form) holds a concurrency slot while it comes:
        # the client gets --client-timeout for all of it, as for a body read before queueing,
        # not for each piece, or a trickle would hold the slot for ever.
        whole = self._client_timeout if metered else None
        deadline = _BodyDeadline(timeout, self._write_timeout, self._client_timeout, whole)
        try:
            # A generator for large bytes too: aiohttp warns about (and blocks on) those.
            async with timeout, self._request(request, headers, _paced(body, deadline)) as upstream:
                deadline.answered()
                yield upstream
        except TimeoutError:
            if deadline.client_late:
                raise ClientBodyTimeout from None
            if timeout.expired():  # our deadline, armed for a write: not aiohttp's
                raise UpstreamWriteTimeout from None
            raise


class ClientBodyTimeout(Exception):
    """The client sent no more of a streamed request body within the client timeout."""


class _BodyDeadline:
    """The one deadline of a paced body, re-armed at each step: the write timeout while
    aiohttp writes a piece, the client timeout while the client's next piece is awaited,
    none once the body is sent (aiohttp's read timeout starts then). Once the upstream has
    answered the write timeout is off for good, although aiohttp's body writer may still be
    running: an upstream that answers before reading everything must not see its response
    cut. A client that stops sending its body still ends the exchange."""

    __slots__ = ("_client", "_client_by", "_timeout", "_waiting_for_client", "_whole", "_write")

    def __init__(
        self,
        timeout: asyncio.Timeout,
        write: float | None,
        client: float | None,
        whole: float | None = None,
    ) -> None:
        self._timeout = timeout
        self._write = write
        self._client = client
        self._whole = whole  # seconds for the whole body, counted from its first wait
        self._client_by: float | None = None  # the loop time the whole body is due by
        self._waiting_for_client = False

    @property
    def client_late(self) -> bool:
        """The deadline expired while the client's next piece was awaited."""
        return self._waiting_for_client and self._timeout.expired()

    def writing(self) -> None:
        self._arm(self._write, waiting_for_client=False)

    def awaiting_client(self) -> None:
        seconds = self._client
        if self._whole is not None:
            now = asyncio.get_running_loop().time()
            if self._client_by is None:
                self._client_by = now + self._whole
            left = self._client_by - now
            seconds = left if seconds is None else min(seconds, left)
        self._arm(seconds, waiting_for_client=True)

    def sent(self) -> None:
        self._arm(None, waiting_for_client=False)

    def answered(self) -> None:
        self._write = None
        if not self._waiting_for_client:
            self.sent()

    def _arm(self, seconds: float | None, *, waiting_for_client: bool) -> None:
        timeout = self._timeout
        if timeout.expired():
            return  # the exchange is ending; client_late keeps the step it expired in
        self._waiting_for_client = waiting_for_client
        timeout.reschedule(None if seconds is None else asyncio.get_running_loop().time() + seconds)


async def _paced(body: bytes | StreamedBody, deadline: _BodyDeadline) -> AsyncIterator[bytes]:
    """Hand the body to aiohttp piece by piece; aiohttp resumes this generator only once the
    previous piece is written and drained, so each step's deadline covers exactly it."""
    if isinstance(body, bytes):
        deadline.writing()
        yield body
    else:
        while True:
            deadline.awaiting_client()
            piece = await body.readany()
            if not piece:
                break
            deadline.writing()
            yield piece
    deadline.sent()
