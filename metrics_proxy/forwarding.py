"""Any path that is not metered: the request and its answer pass through as they are."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import web

from metrics_proxy.access_log import log_refusal, log_upstream_failure
from metrics_proxy.client_io import (
    ClientGone,
    ClientWriteLimits,
    DeadlineResponse,
    abort_connection,
    write_guard,
)
from metrics_proxy.errors import (
    CLIENT_BODY_TIMEOUT,
    ErrorAnswerReader,
    UpstreamFailure,
    gone,
    status_cause,
    upstream_cause,
)
from metrics_proxy.families import ErrorKind
from metrics_proxy.headers import response_headers
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.relay import PASS_THROUGH, BodyFilter, relay
from metrics_proxy.upstream_client import ClientBodyTimeout, Upstream
from metrics_proxy.websocket_relay import is_websocket_upgrade

# What reads an answer on its way through, chosen by its status and Content-Type.
AnswerReader = Callable[[int, str], BodyFilter]


class Forwarder:
    """Streams any request and its answer through unchanged, without token metrics."""

    __slots__ = ("_client_writes", "_recorder", "_upstream")

    def __init__(
        self, upstream: Upstream, recorder: ProxyMetricsRecorder, client_writes: ClientWriteLimits
    ) -> None:
        self._upstream = upstream
        self._recorder = recorder
        self._client_writes = client_writes

    async def forward(
        self, request: web.Request, read: AnswerReader | None = None
    ) -> web.StreamResponse:
        """Pass the request and its answer through; with ``read``, the answer is read on its
        way (and asked for uncompressed, so that it can be)."""
        started = asyncio.get_running_loop().time()
        response: web.StreamResponse | None = None
        try:
            if is_websocket_upgrade(request):
                return await self._upstream.websocket(request)
            body = request.content if request.body_exists else None
            async with self._upstream.open(request, body, metered=read is not None) as upstream:
                response = DeadlineResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=response_headers(upstream.headers, body_rewritten=False),
                    limits=self._client_writes,
                    started=started,
                )
                # Guarded: a client gone by now is no upstream failure.
                await write_guard(response.prepare(request))
                await self._copy(request, upstream, response, _answer_filter(upstream, read))
                return response
        except ClientGone:
            return gone()
        except ClientBodyTimeout:
            # The client stalled its body: 408 while that can still be said, a cut
            # connection once the answer has begun.
            self._recorder.count_error(CLIENT_BODY_TIMEOUT.kind)
            log_refusal(request, CLIENT_BODY_TIMEOUT.status, CLIENT_BODY_TIMEOUT.message)
            if response is not None and response.prepared:
                abort_connection(request)
            return CLIENT_BODY_TIMEOUT.response()
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = UpstreamFailure.of(exc)
            self._recorder.count_error(failure.kind)
            cause = upstream_cause(exc, answered=False)
            log_upstream_failure(request, failure.status, failure.kind, cause)
            return failure.response()

    async def _copy(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        body_filter: BodyFilter,
    ) -> None:
        try:
            await relay(upstream, response, body_filter)
            await write_guard(response.write_eof())
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are out: the only honest signal left is a broken connection.
            kind = UpstreamFailure.of(exc).kind
            self._recorder.count_error(kind)
            abort_connection(request)
            cause = upstream_cause(exc, answered=True)
            log_upstream_failure(request, upstream.status, kind, cause)
            return
        if upstream.status >= 500:
            message = body_filter.message() if isinstance(body_filter, ErrorAnswerReader) else None
            cause = status_cause(upstream.status, message)
            log_upstream_failure(request, upstream.status, ErrorKind.UPSTREAM_STATUS, cause)


def _answer_filter(upstream: aiohttp.ClientResponse, read: AnswerReader | None) -> BodyFilter:
    """What reads a forwarded answer: the caller's reader; for a failure (5xx) otherwise,
    one that keeps its error message for the log; else nothing."""
    if read is not None:
        return read(upstream.status, upstream.content_type)
    return ErrorAnswerReader() if upstream.status >= 500 else PASS_THROUGH
