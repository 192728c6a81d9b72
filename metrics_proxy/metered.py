"""One metered request, from the queue to its single, final account."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web

from metrics_proxy.admission import AdmissionQueue, QueueFull, QueueTimeout
from metrics_proxy.client_io import (
    JSON,
    ClientGone,
    ClientWriteLimits,
    DeadlineResponse,
    UpstreamFailure,
    abort_connection,
    json_error,
    write_guard,
)
from metrics_proxy.errors import error_event
from metrics_proxy.headers import response_headers
from metrics_proxy.lifecycle import Lifecycle
from metrics_proxy.payloads import Injection
from metrics_proxy.record import RequestTracker
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.response_scan import ResponseReader
from metrics_proxy.stream_meter import MAX_UNFINISHED_EVENT, StreamMeter
from metrics_proxy.upstream_client import Upstream

log = logging.getLogger("metrics_proxy")


class ExchangeContext:
    """What every metered exchange shares: the upstream, the recorder, the queue, the
    server's lifecycle (a shutdown ends requests without it being the client's doing), and
    how long writes to the client may wait."""

    __slots__ = ("client_writes", "lifecycle", "queue", "recorder", "upstream")

    def __init__(
        self,
        upstream: Upstream,
        recorder: ProxyMetricsRecorder,
        queue: AdmissionQueue,
        lifecycle: Lifecycle,
        client_writes: ClientWriteLimits,
    ) -> None:
        self.upstream = upstream
        self.recorder = recorder
        self.queue = queue
        self.lifecycle = lifecycle
        self.client_writes = client_writes


class MeteredExchange:
    """One metered request from arrival to its single, final account."""

    __slots__ = (
        "_context",
        "_injection",
        "_request",
        "_response",
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
        context: ExchangeContext,
        request: web.Request,
        tracker: RequestTracker,
        injection: Injection,
        stream: bool,
    ) -> None:
        self._context = context
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
        self._response: web.StreamResponse | None = None

    async def run(self, upstream_body: bytes) -> web.StreamResponse:
        context = self._context
        tracker = self._tracker
        try:
            await context.queue.acquire()
        except (QueueFull, QueueTimeout) as exc:
            return self._refuse(exc)
        except asyncio.CancelledError:
            self._aborted()
            self._settle()
            raise
        except BaseException:
            self._settle()  # whatever went wrong, the waiting gauge is settled
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
            context.queue.release()
            self._settle()

    def _aborted(self) -> None:
        """The handler was cancelled or its client went away: an abort. During a shutdown
        the server itself ended it, which is no client disconnect."""
        self.finished_reason = "abort"
        if not self._context.lifecycle.draining:
            self._context.recorder.count_disconnect(self.stage)

    def _refuse(self, exc: QueueFull | QueueTimeout) -> web.Response:
        """A queue bound was hit: the request never ran (429 full, 503 waited too long)."""
        self.rejected = True
        full = isinstance(exc, QueueFull)
        reason = "max_num_queued_reqs" if full else "max_queue_wait"
        self._context.recorder.count_admission_rejection(reason)
        self.status = 429 if full else 503
        message = "The proxy's queue is full" if full else "Waited too long in the proxy's queue"
        response = json_error(
            self.status, f"{message}: {exc}", "rate_limit_error" if full else "overloaded_error"
        )
        response.headers["Retry-After"] = "1"
        self._settle()
        return response

    def _fail(self, failure: UpstreamFailure) -> web.StreamResponse:
        self.error_kind = failure.kind
        self._context.recorder.count_error(failure.kind)
        if self._response is not None:
            # Headers are out: nothing more can be said, and a cut connection is the honest end.
            abort_connection(self._request)
            return self._response
        self.status = failure.status
        return failure.response()

    async def _exchange(self, upstream_body: bytes) -> web.StreamResponse:
        request = self._request
        context = self._context
        started = asyncio.get_running_loop().time()
        async with context.upstream.open(request, upstream_body, metered=True) as upstream:
            self.status = upstream.status
            declared = upstream.content_type == "text/event-stream"
            # A streaming request answered under another type (a misconfigured upstream) is
            # still an event stream, or the usage the proxy asked for would reach the client.
            event_stream = declared or (self._stream and upstream.content_type != JSON)
            # An event stream's length is the proxy's to change: usage it asked for comes out,
            # and an upstream failure adds an error event. Never the upstream's Content-Length.
            headers = response_headers(upstream.headers, body_rewritten=event_stream)
            if declared:
                headers["Cache-Control"] = "no-cache"
                headers["X-Accel-Buffering"] = "no"
            response = DeadlineResponse(
                status=upstream.status,
                reason=upstream.reason,
                headers=headers,
                limits=context.client_writes,
                started=started,
            )
            await write_guard(response.prepare(request))
            self._response = response
            self.stage = "streaming"
            if upstream.status >= 400:
                self._context.recorder.count_error("upstream_status")
                # 4xx: the upstream refused the request, its engine never ran it (vLLM does
                # not count those); 5xx: it failed.
                self.rejected = upstream.status < 500
                complete = await self._relay(upstream, response)
            elif event_stream:
                complete = await self._relay_events(upstream, response)
            else:
                complete = await self._relay_body(upstream, response)
            if complete:
                await write_guard(response.write_eof())
            return response

    async def _relay(
        self,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        reader: ResponseReader | None = None,
    ) -> bool:
        """Copy the body (through the reader when given); False when the upstream broke and
        the client connection was cut, since a truncated body must not look complete."""
        try:
            async for chunk in upstream.content.iter_any():
                if reader is not None:
                    reader.feed(chunk)
                try:
                    await response.write(chunk)
                except ConnectionResetError:
                    raise ClientGone from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            abort_connection(self._request)
            return False
        return True

    async def _relay_body(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> bool:
        """Copy a non-streamed answer, reading its finish reason and usage as it passes: it
        may be hundreds of megabytes, which the proxy neither keeps nor decodes whole."""
        reader = ResponseReader()
        if not await self._relay(upstream, response, reader):
            return False
        facts = reader.facts()
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
        clock = self._context.recorder.clock
        try:
            try:
                async for chunk in upstream.content.iter_any():
                    out = meter.feed(chunk, clock())
                    if out:
                        try:
                            await response.write(out)
                        except ConnectionResetError:
                            raise ClientGone from None
                    if meter.event_too_large:
                        break  # leaving the upstream's context closes its connection
            finally:
                tail = meter.close(clock())
                usage = meter.usage
                if usage is not None:
                    self.prompt_tokens = usage.prompt_tokens
                    self.generation_tokens = usage.completion_tokens
            if tail:
                await write_guard(response.write(tail))
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._upstream_broke(exc)
            event = error_event(self._broken_message(), "upstream_error", 502)
            await write_guard(response.write(event))
            return True
        if meter.event_too_large:
            self.error_kind = "upstream_event_too_large"
            self.finished_reason = "error"
            self._context.recorder.count_error(self.error_kind)
            message = f"Upstream sent an unfinished event of over {MAX_UNFINISHED_EVENT} bytes"
            await write_guard(response.write(error_event(message, "upstream_error", 502)))
            return True
        if meter.upstream_error:
            self.finished_reason = "error"
            self._context.recorder.count_error("upstream_stream_error")
        elif meter.finish_reason is not None:
            self.finished_reason = meter.finish_reason
        elif meter.done:
            self.finished_reason = "stop"
        else:
            # The upstream closed the stream cleanly but said neither a finish nor [DONE].
            self.error_kind = "upstream_disconnect"
            self._context.recorder.count_error("upstream_disconnect")
        return True

    def _upstream_broke(self, exc: BaseException) -> None:
        kind = UpstreamFailure.of(exc).kind
        self.error_kind = kind
        self.finished_reason = "error"
        self._context.recorder.count_error(kind)

    def _broken_message(self) -> str:
        if self.error_kind == "timeout":
            return "Upstream timed out mid-stream"
        return "Upstream connection failed mid-stream"

    def _settle(self) -> None:
        """The one place a metered request is accounted: gauges, counters, log line."""
        tracker = self._tracker
        recorder = self._context.recorder
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
    request: web.Request,
    status: int,
    exchange: MeteredExchange,
    tracker: RequestTracker,
    now: float,
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
