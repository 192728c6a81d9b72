"""Forwarding: headers, body, streaming, error mapping, and the accounting of each outcome."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp import StreamReader, web
from yarl import URL

from metrics_proxy.admission import AdmissionQueue, QueueFull, QueueTimeout
from metrics_proxy.config import Config, seconds_or_none
from metrics_proxy.errors import error_body, error_event
from metrics_proxy.headers import request_headers, response_headers
from metrics_proxy.lifecycle import Lifecycle
from metrics_proxy.payloads import (
    BadRequestBody,
    Injection,
    UsageMode,
    add_usage_request,
    parse_request,
    request_facts,
    response_facts,
)
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.stream import StreamMeter
from metrics_proxy.tracker import RequestTracker

log = logging.getLogger("metrics_proxy")

# vLLM API paths used as the http_* "handler" label; any other path is "other", so a client
# cannot grow the series without bound.
KNOWN_PATHS: Final = frozenset(
    {
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings",
        "/v1/responses", "/v1/audio/transcriptions", "/v1/audio/translations", "/tokenize",
        "/detokenize", "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank",
        "/v2/rerank", "/invocations", "/health", "/ping", "/version", "/load", "/server_info",
    }
)  # fmt: skip

_JSON = "application/json"


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
        status=status, body=error_body(message, error_type, status), content_type=_JSON
    )


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


class Proxy:
    """Forwards requests to the upstream; meters completions exactly once per outcome."""

    def __init__(
        self,
        config: Config,
        recorder: ProxyMetricsRecorder,
        session: aiohttp.ClientSession,
        queue: AdmissionQueue,
        lifecycle: Lifecycle,
    ) -> None:
        self._base = config.upstream_url
        self._recorder = recorder
        self._session = session
        self._queue = queue
        self._lifecycle = lifecycle
        self._timeout = client_timeout(config)
        self._write_timeout = seconds_or_none(config.write_timeout)
        self._client_timeout = seconds_or_none(config.client_timeout)
        self._usage_mode = UsageMode(config.stream_usage)
        self._max_body = config.max_body_size
        # vLLM started with --api-key wants this on every request; it replaces the client's.
        self._authorization = f"Bearer {config.upstream_api_key}" if config.upstream_api_key else ""

    def _url(self, request: web.Request) -> URL:
        return URL(self._base + request.raw_path, encoded=True)

    @asynccontextmanager
    async def _open(
        self, request: web.Request, body: bytes | StreamReader | None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The upstream's response, its headers received. Sending the body is bounded by the
        write timeout, which aiohttp lacks: the body goes out through a generator that arms
        a deadline before each write and disarms it once aiohttp asks for more."""
        headers = request_headers(request.headers)
        if self._authorization:
            headers["Authorization"] = self._authorization
        async with asyncio.timeout(None) as deadline:
            data: object = body
            if body is not None:
                # Keep the client's framing (no switch to chunked for a streamed body).
                length = len(body) if isinstance(body, bytes) else request.content_length
                if length is not None:
                    headers["Content-Length"] = str(length)
                # Always a generator: aiohttp warns about (and blocks on) large bytes bodies.
                data = _paced(body, deadline, self._write_timeout)
            async with self._session.request(
                request.method,
                self._url(request),
                headers=headers,
                data=data,
                timeout=self._timeout,
                allow_redirects=False,
            ) as upstream:
                deadline.reschedule(None)  # answered: whatever the upstream read was enough
                yield upstream

    # --- unmetered: any other path ------------------------------------------------------

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Stream any request and its answer through unchanged, without token metrics."""
        clock = self._recorder.clock
        started = clock()
        status = 502
        try:
            body = request.content if request.body_exists else None
            async with self._open(request, body) as upstream:
                status = upstream.status
                response = web.StreamResponse(
                    status=upstream.status,
                    reason=upstream.reason,
                    headers=response_headers(upstream.headers, body_rewritten=False),
                )
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await _write_guard(response.write(chunk))
                    await _write_guard(response.write_eof())
                except (TimeoutError, aiohttp.ClientError) as exc:
                    # Headers are out: the only honest signal left is a broken connection.
                    kind = "timeout" if isinstance(exc, TimeoutError) else "upstream_disconnect"
                    self._recorder.count_error(kind)
                    _abort(request)
                return response
        except ClientGone:
            return web.Response()  # nobody is listening any more
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = UpstreamFailure.of(exc)
            self._recorder.count_error(failure.kind)
            status = failure.status
            return failure.response()
        finally:
            path = request.path
            self._recorder.observe_http(
                path if path in KNOWN_PATHS else "other", request.method, status, clock() - started
            )

    # --- metered: completions -----------------------------------------------------------

    async def metered(self, request: web.Request) -> web.StreamResponse:
        recorder = self._recorder
        arrival = recorder.clock()
        try:
            async with asyncio.timeout(self._client_timeout):
                body = await request.read()
            obj = parse_request(body)
        except TimeoutError:
            recorder.count_error("client_timeout")
            response = json_error(
                408, "The request body did not arrive in time", "invalid_request_error"
            )
            response.force_close()  # the rest of the body may still come: drop the connection
        except web.HTTPRequestEntityTooLarge:
            recorder.count_error("body_too_large")
            response = json_error(
                413,
                f"Request body is larger than the proxy's limit of {self._max_body} bytes",
                "invalid_request_error",
            )
        except BadRequestBody as exc:
            recorder.count_error("bad_request")
            response = json_error(400, str(exc), "invalid_request_error")
        else:
            facts = request_facts(obj)
            upstream_body, injection = add_usage_request(body, obj, facts, self._usage_mode)
            tracker = recorder.start_request(arrival)
            tracker.n = facts.n
            tracker.max_tokens = facts.max_tokens
            exchange = _Exchange(self, request, tracker, injection, facts.stream)
            return await exchange.run(upstream_body)
        recorder.observe_http(
            request.path, request.method, response.status, recorder.clock() - arrival
        )
        return response


async def _paced(
    body: bytes | StreamReader, deadline: asyncio.Timeout, seconds: float | None
) -> AsyncIterator[bytes]:
    """Hand the body to aiohttp piece by piece; aiohttp resumes this generator only once the
    previous piece is written and drained, so the deadline covers exactly the writing."""
    if seconds is None:
        if isinstance(body, bytes):
            yield body
        else:
            async for piece in body.iter_any():
                yield piece
        return
    loop = asyncio.get_running_loop()
    if isinstance(body, bytes):
        deadline.reschedule(loop.time() + seconds)
        yield body
        deadline.reschedule(None)
        return
    async for piece in body.iter_any():
        deadline.reschedule(loop.time() + seconds)
        yield piece
        deadline.reschedule(None)


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


class _Exchange:
    """One metered request from arrival to its single, final account."""

    __slots__ = (
        "_injection",
        "_proxy",
        "_request",
        "_stream",
        "_tracker",
        "error_kind",
        "finished_reason",
        "generation_tokens",
        "prompt_tokens",
        "rejected",
        "stage",
        "status",
    )

    def __init__(
        self,
        proxy: Proxy,
        request: web.Request,
        tracker: RequestTracker,
        injection: Injection,
        stream: bool,
    ) -> None:
        self._proxy = proxy
        self._request = request
        self._tracker = tracker
        self._injection = injection
        self._stream = stream
        self.stage = "waiting"
        self.status = 502
        self.finished_reason: str | None = "error"
        self.error_kind: str | None = None
        self.prompt_tokens: int | None = None
        self.generation_tokens: int | None = None
        self.rejected = False

    async def run(self, upstream_body: bytes) -> web.StreamResponse:
        proxy = self._proxy
        tracker = self._tracker
        try:
            await proxy._queue.acquire()
        except (QueueFull, QueueTimeout) as exc:
            return self._refuse(exc)
        except asyncio.CancelledError:
            self._aborted()
            self._settle()
            raise
        try:
            tracker.slot_acquired()
            self.stage = "before_headers"
            return await self._exchange(upstream_body)
        except (ClientGone, asyncio.CancelledError) as exc:
            self._aborted()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return web.Response()  # nobody is listening any more
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self._fail(UpstreamFailure.of(exc))
        finally:
            proxy._queue.release()
            self._settle()

    def _aborted(self) -> None:
        """The handler was cancelled or its client went away: an abort. During a shutdown
        the server itself ended it, which is no client disconnect."""
        self.finished_reason = "abort"
        if not self._proxy._lifecycle.draining:
            self._proxy._recorder.count_disconnect(self.stage)

    def _refuse(self, exc: QueueFull | QueueTimeout) -> web.Response:
        """A queue bound was hit: the request never ran (429 full, 503 waited too long)."""
        self.rejected = True
        full = isinstance(exc, QueueFull)
        reason = "max_num_queued_reqs" if full else "max_queue_wait"
        self._proxy._recorder.count_admission_rejection(reason)
        self.status = 429 if full else 503
        message = "The proxy's queue is full" if full else "Waited too long in the proxy's queue"
        response = json_error(
            self.status, f"{message}: {exc}", "rate_limit_error" if full else "overloaded_error"
        )
        response.headers["Retry-After"] = "1"
        self._settle()
        return response

    def _fail(self, failure: UpstreamFailure) -> web.Response:
        self.error_kind = failure.kind
        self._proxy._recorder.count_error(failure.kind)
        if self.stage == "streaming":
            return web.Response()  # the response is already out; nothing more can be said
        self.status = failure.status
        return failure.response()

    async def _exchange(self, upstream_body: bytes) -> web.StreamResponse:
        request = self._request
        async with self._proxy._open(request, upstream_body) as upstream:
            self.status = upstream.status
            declared = upstream.content_type == "text/event-stream"
            # A streaming request answered under another type (a misconfigured upstream) is
            # still an event stream, or the usage the proxy asked for would reach the client.
            event_stream = declared or (self._stream and upstream.content_type != _JSON)
            rewrites = event_stream and (
                self._injection.strip_final_usage or self._injection.strip_chunk_usage
            )
            headers = response_headers(upstream.headers, body_rewritten=rewrites)
            if declared:
                headers["Cache-Control"] = "no-cache"
                headers["X-Accel-Buffering"] = "no"
            response = web.StreamResponse(
                status=upstream.status, reason=upstream.reason, headers=headers
            )
            await _write_guard(response.prepare(request))
            self.stage = "streaming"
            if upstream.status >= 400:
                self._proxy._recorder.count_error("upstream_status")
                # 4xx: the upstream refused the request, its engine never ran it (vLLM does
                # not count those); 5xx: it failed.
                self.rejected = upstream.status < 500
                complete = await self._relay(upstream, response)
            elif event_stream:
                complete = await self._relay_events(upstream, response)
            else:
                complete = await self._relay_body(upstream, response)
            if complete:
                await _write_guard(response.write_eof())
            return response

    async def _relay(self, upstream: aiohttp.ClientResponse, response: web.StreamResponse) -> bool:
        """Copy the body; False when the upstream broke and the client connection was cut."""
        try:
            async for chunk in upstream.content.iter_any():
                await _write_guard(response.write(chunk))
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            _abort(self._request)
            return False
        return True

    async def _relay_body(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> bool:
        parts: list[bytes] = []
        try:
            async for chunk in upstream.content.iter_any():
                parts.append(chunk)
                await _write_guard(response.write(chunk))
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            _abort(self._request)  # a truncated JSON body must not look complete
            return False
        facts = response_facts(b"".join(parts))
        self.finished_reason = facts.finish_reason or "stop"
        if facts.usage is not None:
            self.prompt_tokens = facts.usage.prompt_tokens
            self.generation_tokens = facts.usage.completion_tokens
        return True

    async def _relay_events(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> bool:
        """Meter and forward an event stream; an upstream failure ends it with an error
        event, so the stream itself always ends cleanly (True)."""
        meter = StreamMeter(self._tracker, self._injection)
        clock = self._proxy._recorder.clock
        try:
            try:
                async for chunk in upstream.content.iter_any():
                    out = meter.feed(chunk, clock())
                    if out:
                        try:
                            await response.write(out)
                        except ConnectionResetError:
                            raise ClientGone from None
            finally:
                tail = meter.close(clock())
                usage = meter.usage
                if usage is not None:
                    self.prompt_tokens = usage.prompt_tokens
                    self.generation_tokens = usage.completion_tokens
            if tail:
                await _write_guard(response.write(tail))
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            event = error_event(self._broken_message(), "upstream_error", 502)
            await _write_guard(response.write(event))
            return True
        if meter.upstream_error:
            self.finished_reason = "error"
        elif meter.finish_reason is not None:
            self.finished_reason = meter.finish_reason
        elif meter.done:
            self.finished_reason = "stop"
        else:
            # The upstream closed the stream cleanly but said neither a finish nor [DONE].
            self.error_kind = "upstream_disconnect"
            self._proxy._recorder.count_error("upstream_disconnect")
        return True

    def _upstream_broke(self, exc: BaseException) -> None:
        kind = UpstreamFailure.of(exc).kind
        self.error_kind = kind
        self.finished_reason = "error"
        self._proxy._recorder.count_error(kind)

    def _broken_message(self) -> str:
        if self.error_kind == "timeout":
            return "Upstream timed out mid-stream"
        return "Upstream connection failed mid-stream"

    def _settle(self) -> None:
        """The one place a metered request is accounted: gauges, counters, log line."""
        tracker = self._tracker
        proxy = self._proxy
        recorder = proxy._recorder
        now = recorder.clock()
        if self.rejected:
            tracker.discard()
        else:
            tracker.finish(
                self.finished_reason,
                prompt_tokens=self.prompt_tokens,
                generation_tokens=self.generation_tokens,
                now=now,
            )
        request = self._request
        status = self.status if self.finished_reason != "abort" else 499
        recorder.observe_http(request.path, request.method, status, now - tracker.arrival)
        if log.isEnabledFor(logging.INFO):
            _log_summary(request, status, self, tracker, now)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _log_summary(
    request: web.Request, status: int, exchange: _Exchange, tracker: RequestTracker, now: float
) -> None:
    slot = tracker.slot_at
    first = tracker.first_output_at
    end = tracker.last_output_at if tracker.last_output_at is not None else now
    log.info(
        "%s %s status=%s finished_reason=%s queue=%s inference=%s ttft=%s e2e=%s "
        "prompt_tokens=%s generation_tokens=%s request_id=%s",
        request.method,
        request.path,
        status,
        "rejected" if exchange.rejected else exchange.finished_reason,
        _seconds(None if slot is None else slot - tracker.arrival),
        _seconds(None if slot is None else end - slot),
        _seconds(None if first is None else first - tracker.arrival),
        _seconds(now - tracker.arrival),
        "-" if exchange.prompt_tokens is None else exchange.prompt_tokens,
        tracker.output_chunks if exchange.generation_tokens is None else exchange.generation_tokens,
        request.headers.get("X-Request-Id", "-"),
    )


async def _write_guard(write: Awaitable[object]) -> None:
    """Await a write to the client, turning its failure into ClientGone."""
    try:
        await write
    except ConnectionResetError:
        raise ClientGone from None
