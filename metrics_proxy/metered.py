"""Metered routes: one request from its body to its single, final account, for any API."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import aiohttp
from aiohttp import web

from metrics_proxy.access_log import log_metered, log_refusal
from metrics_proxy.admission import AdmissionQueue, QueueFull, QueueTimeout
from metrics_proxy.apis.base import (
    NO_INJECTION,
    Api,
    ApiChoice,
    BodyReader,
    FormApi,
    Injection,
    ResponseFacts,
    UsageMode,
    parse_request,
    requested_model,
    streams_its_body,
)
from metrics_proxy.arrival_stamps import arrival_of
from metrics_proxy.attribution import Attribution
from metrics_proxy.background import HeldResponses
from metrics_proxy.client_io import (
    ClientGone,
    ClientWriteLimits,
    DeadlineResponse,
    abort_connection,
    write_guard,
)
from metrics_proxy.errors import (
    CLIENT_BODY_TIMEOUT,
    CLIENT_GONE,
    JSON,
    ErrorAnswerReader,
    RequestFailure,
    UnsupportedEncoding,
    UpstreamFailure,
    error_event,
    gone,
    json_error,
    status_cause,
    stream_cause,
    upstream_cause,
)
from metrics_proxy.families import DisconnectStage, ErrorKind, FinishedReason, RejectionReason
from metrics_proxy.form_body import FormBody
from metrics_proxy.headers import response_headers
from metrics_proxy.lifecycle import EndedByShutdown, Lifecycle, shutdown_event
from metrics_proxy.model_series import ModelSeries
from metrics_proxy.record import RequestRecord
from metrics_proxy.recorder import ProxyMetricsRecorder
from metrics_proxy.relay import BodyFilter, RelayControl, relay
from metrics_proxy.stream_meter import MAX_UNFINISHED_EVENT, StreamMeter
from metrics_proxy.upstream_client import ClientBodyTimeout, StreamedBody, Upstream


class MeteredContext:
    """What every metered exchange shares: the upstream, the recorder, the queue, the
    server's lifecycle (a shutdown ends requests without it being the client's doing), how
    long writes to the client may wait, how request bodies are read, and where the records
    of responses that run on after their exchange wait to be counted."""

    __slots__ = (
        "attribution",
        "client_timeout",
        "client_writes",
        "held",
        "lifecycle",
        "loop",
        "max_body",
        "queue",
        "recorder",
        "upstream",
        "usage_mode",
    )

    def __init__(
        self,
        upstream: Upstream,
        recorder: ProxyMetricsRecorder,
        queue: AdmissionQueue,
        lifecycle: Lifecycle,
        client_writes: ClientWriteLimits,
        *,
        usage_mode: UsageMode,
        client_timeout: float | None,
        max_body: int,
        held: HeldResponses,
        attribution: Attribution | None = None,
    ) -> None:
        self.upstream = upstream
        self.recorder = recorder
        self.queue = queue
        self.lifecycle = lifecycle
        self.client_writes = client_writes
        self.usage_mode = usage_mode
        self.client_timeout = client_timeout
        self.max_body = max_body
        self.held = held
        self.attribution = attribution  # who sent each request, when asked (attribution.py)
        # Built on the loop it serves: asking asyncio for it costs a getpid() system call.
        self.loop = asyncio.get_running_loop()


async def _read_body(request: web.Request, context: MeteredContext) -> bytes:
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        # vLLM takes no compressed request bodies; the proxy could not read one either.
        raise UnsupportedEncoding(request.headers["Content-Encoding"])
    if request.content.is_eof():
        # The whole body came in with the headers (nearly every request): reading it cannot
        # wait, so it needs no timer, which costs as much as the rest of the read.
        return await request.read()
    async with asyncio.timeout(context.client_timeout):
        return await request.read()


async def handle_metered(
    context: MeteredContext, api: Api | ApiChoice, request: web.Request
) -> web.StreamResponse:
    """A request on one of ``api``'s routes: read and check its body, then run it (as the
    API its body is for, on a route that serves several)."""
    if not isinstance(api, ApiChoice) and streams_its_body(api):
        return await _handle_form(context, api, request)
    recorder = context.recorder
    arrival = arrival_of(recorder.clock)
    try:
        body = await _read_body(request, context)
        obj = parse_request(body)
    except Exception as exc:
        failure = RequestFailure.of(exc, context.max_body)
        if failure is None:
            raise
        recorder.count_error(failure.kind)
        log_refusal(request, failure.status, failure.message)
        return failure.response()
    if isinstance(api, ApiChoice):
        api = api.choose(obj)
    facts = api.read_request(obj)
    upstream_body, injection = api.prepare(body, obj, facts, context.usage_mode)
    series = recorder.series_for(requested_model(obj))  # one dict lookup, or none
    record = series.start_request(arrival)
    record.n = facts.n
    record.max_tokens = facts.max_tokens
    exchange = MeteredExchange(context, request, series, record, api, injection, facts.stream)
    return await exchange.run(upstream_body)


class MeteredExchange:
    """One metered request from the queue to its single, final account."""

    __slots__ = (
        "_api",
        "_cause",
        "_context",
        "_injection",
        "_meter",
        "_pending_id",
        "_refused_because",
        "_request",
        "_response",
        "_series",
        "_stream",
        "_tenant",
        "record",
    )

    def __init__(
        self,
        context: MeteredContext,
        request: web.Request,
        series: ModelSeries,
        record: RequestRecord,
        api: Api,
        injection: Injection,
        stream: bool,
    ) -> None:
        self._context = context
        self._request = request
        self._series = series  # its model's, which the record moves too
        self._api = api
        self._injection = injection
        self._stream = stream
        self._response: web.StreamResponse | None = None
        self._meter: StreamMeter | None = None  # an event stream's, once it is read
        self._pending_id: str | None = None  # a non-streamed answer's running response
        self._refused_because: str | None = None  # why the proxy refused it, for the log
        self._cause: str | None = None  # what failed upstream, for the log
        self.record = record
        attribution = context.attribution
        # The tenant its slot is held for ("": no attribution), read before it queues.
        self._tenant = "" if attribution is None else attribution.attribute(request.headers, record)

    async def run(self, upstream_body: bytes | StreamedBody) -> web.StreamResponse:
        queue, tenant = self._context.queue, self._tenant
        try:
            await queue.acquire(tenant)
        except (QueueFull, QueueTimeout) as exc:
            return self._refuse(exc)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                self._aborted()
            self._settle()  # whatever went wrong, the waiting gauge is settled
            raise
        try:
            self.record.slot_acquired()
            self.record.stage = DisconnectStage.BEFORE_HEADERS
            return await self._exchange(upstream_body)
        except EndedByShutdown:
            return await self._end_for_shutdown()
        except (ClientGone, asyncio.CancelledError) as exc:
            self._aborted()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return gone()
        except (TimeoutError, aiohttp.ClientError, ClientBodyTimeout) as exc:
            return self._fail(self._failure(exc))
        finally:
            queue.release(tenant)
            self._settle()

    def _aborted(self) -> None:
        """The handler was cancelled or its client went away: an abort. During a shutdown
        the server itself ended it, which is no client disconnect."""
        record = self.record
        record.finished_reason = FinishedReason.ABORT
        record.status = CLIENT_GONE
        if not self._context.lifecycle.ending:
            self._series.count_disconnect(record.stage)

    async def _end_for_shutdown(self) -> web.StreamResponse:
        """The shutdown ended a stream the upstream had not: it ends as a failed stream does,
        with the API's error event after the whole events held back, and counts as an abort."""
        meter, response = self._meter, self._response
        assert meter is not None
        assert response is not None
        self.record.finished_reason = FinishedReason.ABORT
        event = shutdown_event(self._api.error_event_name)
        try:
            await write_guard(response.write(meter.released_at_close + event))
            await write_guard(response.write_eof())
        except ClientGone:
            self._aborted()
            return gone()
        return response

    def _refuse(self, exc: QueueFull | QueueTimeout) -> web.Response:
        """A queue bound was hit: the request never ran (429 full, 503 waited too long)."""
        full = isinstance(exc, QueueFull)
        reason = RejectionReason.MAX_NUM_QUEUED_REQS if full else RejectionReason.MAX_QUEUE_WAIT
        self._series.count_admission_rejection(reason)
        self.record.rejected = True
        status = self.record.status = 429 if full else 503
        message = "The proxy's queue is full" if full else "Waited too long in the proxy's queue"
        message = self._refused_because = f"{message}: {exc}"
        response = json_error(status, message, "rate_limit_error" if full else "overloaded_error")
        response.headers["Retry-After"] = "1"
        self._settle()
        return response

    def _failure(self, exc: Exception) -> UpstreamFailure | RequestFailure:
        return UpstreamFailure.of(exc)

    def _fail(self, failure: UpstreamFailure | RequestFailure) -> web.StreamResponse:
        self._count(failure.kind)
        if isinstance(failure, RequestFailure):
            self.record.rejected = True  # the client's body never all reached the engine
            self._refused_because = failure.message
        if self._response is not None:
            # Headers are out: nothing more can be said, and a cut connection is the honest end.
            abort_connection(self._request)
            return self._response
        self.record.status = failure.status
        # A request that never reached the upstream ran on no engine: proxy_errors_total and
        # http_* count it, no vLLM request series does.
        if isinstance(failure, UpstreamFailure) and not failure.reached:
            self.record.rejected = True
        return failure.response()

    def _count(self, kind: ErrorKind) -> None:
        self.record.fail(kind)
        self._series.count_error(kind)
        if kind in _BROKEN_UPSTREAM and self._cause is None:
            # Every caller counts a broken upstream in the except clause that caught it: the
            # exception being handled is the one the log line describes.
            exc = sys.exception()
            if exc is not None:
                self._cause = upstream_cause(exc, answered=self._response is not None)

    async def _exchange(self, upstream_body: bytes | StreamedBody) -> web.StreamResponse:
        request = self._request
        record = self.record
        started = self._context.loop.time()
        async with self._context.upstream.open(request, upstream_body, metered=True) as upstream:
            self._answered()
            record.status = upstream.status
            response = self._response = self._response_for(upstream, started)
            await write_guard(response.prepare(request))
            record.stage = DisconnectStage.STREAMING
            if upstream.status >= 400:
                complete = await self._relay_refusal(upstream, response)
            elif self._is_event_stream(upstream):
                control = RelayControl(upstream.content)
                with self._context.lifecycle.relaying(control):
                    complete = await self._relay_events(upstream, response, control)
            else:
                complete = await self._relay_body(upstream, response)
            if complete:
                await write_guard(response.write_eof())
            return response

    def _answered(self) -> None:
        """The upstream answered; a JSON request's facts were known before it went."""

    def _is_event_stream(self, upstream: aiohttp.ClientResponse) -> bool:
        # A streaming request answered under another type (a misconfigured upstream) is
        # still an event stream, or the usage the proxy asked for would reach the client.
        content_type = upstream.content_type
        return content_type == "text/event-stream" or (self._stream and content_type != JSON)

    def _response_for(self, upstream: aiohttp.ClientResponse, started: float) -> DeadlineResponse:
        event_stream = upstream.status < 400 and self._is_event_stream(upstream)
        # An event stream's length is the proxy's to change: usage it asked for comes out,
        # and an upstream failure adds an error event. Never the upstream's Content-Length.
        headers = response_headers(upstream.headers, body_rewritten=event_stream)
        if upstream.content_type == "text/event-stream":
            headers["Cache-Control"] = "no-cache"
            headers["X-Accel-Buffering"] = "no"
        return DeadlineResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=headers,
            limits=self._context.client_writes,
            started=started,
        )

    async def _relay_refusal(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> bool:
        """4xx: the upstream refused the request, its engine never ran it (vLLM does not count
        those); 5xx: it failed. Either way its answer goes to the client as it is."""
        self._series.count_error(ErrorKind.UPSTREAM_STATUS)
        self.record.rejected = upstream.status < 500
        answer = ErrorAnswerReader()
        complete = await self._copy(upstream, response, answer)
        self._cause = self._cause or status_cause(upstream.status, answer.message())
        return complete

    async def _relay_body(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse
    ) -> bool:
        """Copy a non-streamed answer, reading its finish reason and usage as it passes: it
        may be hundreds of megabytes, which the proxy neither keeps nor decodes whole."""
        answer = self.record if self._api.answer_is_output else None
        reading = _Reading(self._api.body_reader(), answer, self._clock)
        if not await self._copy(upstream, response, reading):
            return False
        facts = reading.facts()
        record = self.record
        record.finish_with(facts.finish_reason)
        record.report_usage(facts.usage)
        record.engine = facts.engine
        self._pending_id = facts.pending_id
        if answer is not None and record.generation_tokens is None:
            record.generation_tokens = 0  # its one output is no generated token
            record.estimated = True  # but its prompt tokens went unreported: say so
        return True

    async def _copy(
        self, upstream: aiohttp.ClientResponse, response: web.StreamResponse, reading: BodyFilter
    ) -> bool:
        """Relay a body; False when the upstream broke and the client connection was cut,
        since a truncated body must not look complete."""
        try:
            await relay(upstream, response, reading)
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._count(UpstreamFailure.of(exc).kind)
            abort_connection(self._request)
            return False
        return True

    async def _relay_events(
        self,
        upstream: aiohttp.ClientResponse,
        response: web.StreamResponse,
        control: RelayControl | None = None,
    ) -> bool:
        """Meter and forward an event stream; an upstream failure ends it with an error
        event, so the stream itself always ends cleanly (True)."""
        meter = self._meter = StreamMeter(self._api, self._injection)
        metering = _Metering(meter, self.record, self._clock)
        try:
            try:
                await relay(upstream, response, metering, control)
            finally:
                tail = metering.close()  # usage seen so far counts, whatever happened
            if tail:
                await write_guard(response.write(tail))
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = UpstreamFailure.of(exc)
            self._count(failure.kind)
            # Whole events the meter held back go out; half an event never does.
            kept = meter.released_at_close + failure.event(self._api.error_event_name)
            await write_guard(response.write(kept))
            return True
        await self._end_events(metering.meter, response)
        return True

    async def _end_events(self, meter: StreamMeter, response: web.StreamResponse) -> None:
        """How a stream that ended without breaking ended: the meter's last word."""
        if meter.event_too_large:
            self._count(ErrorKind.UPSTREAM_EVENT_TOO_LARGE)
            message = f"Upstream sent an unfinished event of over {MAX_UNFINISHED_EVENT} bytes"
            event = error_event(message, "upstream_error", 502, self._api.error_event_name)
            # Whole events the meter held back go first, as they came.
            await write_guard(response.write(meter.released_at_close + event))
        elif meter.upstream_error:
            self._count(ErrorKind.UPSTREAM_STREAM_ERROR)
        elif meter.finish_reason is not None or meter.done:
            self.record.finish_with(meter.finish_reason)
        else:
            # The upstream closed the stream cleanly but said neither a finish nor [DONE].
            self.record.error_kind = ErrorKind.UPSTREAM_DISCONNECT
            self._series.count_error(ErrorKind.UPSTREAM_DISCONNECT)

    @property
    def _clock(self) -> Callable[[], float]:
        return self._context.recorder.clock

    def _settle(self) -> None:
        """The one place a metered request is accounted: the record settles (gauges and
        every series), and its log line is written from it. A response that runs on after
        its exchange is held instead, to be counted once it is seen finished."""
        record = self.record
        if record.detached:
            return  # held already
        pending_id = self._running_response()
        if pending_id is not None:
            self._context.held.hold(pending_id, record)
            log_metered(self._request, record)
        elif record.settle():
            kind = record.error_kind
            cause = self._cause or (stream_cause(kind) if kind is not None else None)
            log_metered(self._request, record, cause=cause, reason=self._refused_because)

    def _running_response(self) -> str | None:
        """The id of a response still running when its exchange ends: a background one,
        answered ``queued``, or streamed to a client that left (or an upstream that broke)
        before its final status."""
        meter = self._meter
        if meter is None:
            return self._pending_id
        if meter.finish_reason is not None or meter.upstream_error:
            return None
        return meter.pending_id


# The failures of an upstream that broke (no answer, a cut answer): the log says which.
_BROKEN_UPSTREAM = frozenset({ErrorKind.CONNECT, ErrorKind.TIMEOUT, ErrorKind.UPSTREAM_DISCONNECT})


class _Reading:
    """A body filter that lets every byte through and reads them on the way (or not). With
    ``answer``, the answer's first byte is that record's one output."""

    __slots__ = ("_answer", "_clock", "_reader")
    stopped = False

    def __init__(
        self,
        reader: BodyReader | None,
        answer: RequestRecord | None,
        clock: Callable[[], float],
    ) -> None:
        self._reader = reader
        self._answer = answer
        self._clock = clock

    def feed(self, chunk: bytes) -> bytes:
        if self._answer is not None:
            self._answer.output(0, self._clock())
            self._answer = None
        if self._reader is not None:
            self._reader.feed(chunk)
        return chunk

    def facts(self) -> ResponseFacts:
        assert self._reader is not None
        return self._reader.facts()


class _Metering:
    """A body filter that meters an event stream: what the meter lets through goes on, and
    each output it saw moves the record's clock (TTFT, then inter-token latency)."""

    __slots__ = ("_clock", "_record", "meter", "stopped")

    def __init__(
        self, meter: StreamMeter, record: RequestRecord, clock: Callable[[], float]
    ) -> None:
        self.meter = meter
        self._record = record
        self._clock = clock
        self.stopped = False

    def feed(self, chunk: bytes) -> bytes:
        # The per-chunk path: one call into the meter, a clock read only when output came.
        meter = self.meter
        out, outputs = meter.feed(chunk)
        if outputs:
            now = self._clock()
            output = self._record.output
            for index in outputs:
                output(index, now)
        if meter.event_too_large:
            self.stopped = True
        return out

    def close(self) -> bytes:
        out, outputs = self.meter.close()
        now = self._clock()
        for index in outputs:
            self._record.output(index, now)
        self._record.report_usage(self.meter.usage)
        self._record.engine = self.meter.engine
        return out


# --- APIs whose request body streams upstream as it arrives (multipart forms) -------------


async def _handle_form(
    context: MeteredContext, api: FormApi, request: web.Request
) -> web.StreamResponse:
    """A form: checked on its headers alone, queued, then sent upstream as it arrives (an
    audio file is too large to read first); what it asks for is read on the way."""
    recorder = context.recorder
    arrival = arrival_of(recorder.clock)
    try:
        body = FormBody(request, api, context.usage_mode, context.max_body)
    except Exception as exc:
        failure = RequestFailure.of(exc, context.max_body)
        if failure is None:
            raise
        recorder.count_error(failure.kind)
        log_refusal(request, failure.status, failure.message)
        return failure.response()
    # Its model is known once its fields have passed: until then it counts as the fixed
    # model's, or "other" with auto.
    series = recorder.series_for(None)
    exchange = _FormExchange(context, request, series, series.start_request(arrival), api, body)
    return await exchange.run(body)


class _FormExchange(MeteredExchange):
    """A metered exchange whose request facts are known once its body has passed."""

    __slots__ = ("_body",)

    def __init__(
        self,
        context: MeteredContext,
        request: web.Request,
        series: ModelSeries,
        record: RequestRecord,
        api: Api,
        body: FormBody,
    ) -> None:
        super().__init__(context, request, series, record, api, NO_INJECTION, stream=False)
        self._body = body

    def _answered(self) -> None:
        """An upstream reads a form whole before it answers: the body has passed."""
        body = self._body
        facts = body.facts()
        self._stream = facts.stream
        self._injection = body.injection
        self.record.n = facts.n
        self.record.max_tokens = facts.max_tokens
        series = self._context.recorder.series_for(facts.model)
        if series is not self._series:
            self._series = series
            self.record.move_to(series)

    def _aborted(self) -> None:
        super()._aborted()
        if not self._body.complete:
            self.record.rejected = True  # its form never reached the upstream whole

    def _failure(self, exc: Exception) -> UpstreamFailure | RequestFailure:
        """The body's own failures first: aiohttp reports them as the upstream's."""
        if self._body.too_large:
            limit = self._context.max_body
            message = f"Request body is larger than the proxy's limit of {limit} bytes"
            # As for a JSON body: the rest of the body is read and dropped (aiohttp's
            # lingering) so that the client, still sending, gets to read the answer.
            return RequestFailure(ErrorKind.BODY_TOO_LARGE, 413, message, close=False)
        if isinstance(exc, ClientBodyTimeout):
            return CLIENT_BODY_TIMEOUT
        return super()._failure(exc)
