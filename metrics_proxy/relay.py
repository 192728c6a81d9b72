"""The one copy loop: an upstream body to the client, as it arrives, through a filter.

A body that was whole when its headers came (most non-streamed answers) is copied at once.
A body still coming (an event stream, a large answer) is relayed at transport level: for
as long as it lasts, the upstream connection's transport delivers to a small protocol that
lets aiohttp's own protocol and parser (llhttp) take the bytes apart as usual, then passes
what they yield through the filter and straight into the client's transport, in the same
callback. No task wakes per chunk, no read timer is re-armed per chunk, and aiohttp's
write path is not walked per chunk; at an engine's rate (one chunk per stream every few
milliseconds, thousands of streams a second) that per-chunk machinery was most of the cost.

Backpressure is the transport's own: when the client's transport holds more than its
high-water mark, the upstream transport stops reading until the client has drained, and
that wait has the client-write deadline. The read timeout is one timer per body, re-armed
only when it fires.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import aiohttp
from aiohttp import web
from aiohttp.client_proto import ResponseHandler

from metrics_proxy.client_io import ClientGone, DeadlineResponse


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


class RelayControl:
    """The owner's hold on one relay: ``set_exception`` ends it from outside (a shutdown)
    with ``exc``, raised where the relay reads its upstream next, which is now."""

    __slots__ = ("_relay", "_source")

    def __init__(self, source: aiohttp.StreamReader) -> None:
        self._source = source
        self._relay: TransportRelay | None = None

    def set_exception(self, exc: BaseException) -> None:
        self._source.set_exception(exc)  # the awaiting loop's read raises it
        if self._relay is not None:
            self._relay.read_now()  # and the transport relay's, at once

    def bind(self, transport_relay: TransportRelay) -> None:
        self._relay = transport_relay


async def relay(
    upstream: aiohttp.ClientResponse,
    response: web.StreamResponse,
    body_filter: BodyFilter,
    control: RelayControl | None = None,
) -> None:
    """Copy ``upstream``'s body to ``response`` (prepared) until it ends or the filter stops.

    An upstream failure propagates as aiohttp raises it (TimeoutError, aiohttp.ClientError),
    for the caller to end the response as its kind of body must end; a client that is gone
    raises ClientGone; what ``control`` was given, as given.
    """
    content = upstream.content
    if not content.is_eof():
        transport_relay = TransportRelay.attach(upstream, response, body_filter)
        if transport_relay is not None:
            if control is not None:
                control.bind(transport_relay)
            await transport_relay.run()
            return
    await _copy_awaiting(content, response, body_filter)


async def _copy_awaiting(
    source: aiohttp.StreamReader, response: web.StreamResponse, body_filter: BodyFilter
) -> None:
    """The plain loop: for a body already whole (nothing to wait for), or a connection the
    transport relay cannot take over."""
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


# What the relay's task is woken for: the body ended (or failed), or the client must drain.
_ENDED = 0
_DRAIN = 1


class TransportRelay(asyncio.Protocol):
    """The upstream transport's protocol while one body is relayed (see the module's doc).

    Every callback goes on to aiohttp's protocol first, so aiohttp's parser, its payload
    reader and its connection pool stay exactly as they would be; this class only takes
    the payload out as soon as it is parsed. It gives the transport back before aiohttp
    releases or closes the connection.
    """

    __slots__ = (
        "_chunked",
        "_client",
        "_client_high_water",
        "_content",
        "_ended",
        "_failure",
        "_feed",
        "_filter",
        "_handler",
        "_last_read",
        "_loop",
        "_paused",
        "_read_timeout",
        "_response",
        "_timer",
        "_transport",
        "_waiter",
    )

    def __init__(
        self,
        handler: ResponseHandler,
        transport: asyncio.Transport,
        content: aiohttp.StreamReader,
        response: DeadlineResponse,
        client: asyncio.Transport,
        body_filter: BodyFilter,
    ) -> None:
        self._handler = handler
        self._transport = transport
        self._content = content
        self._response = response
        self._client = client
        self._filter = body_filter
        self._feed = body_filter.feed
        self._loop = asyncio.get_running_loop()
        self._chunked = response.chunked_body
        self._client_high_water = client.get_write_buffer_limits()[1]
        self._read_timeout = handler.read_timeout
        self._last_read = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False  # reading the upstream, stopped for the client to drain
        self._ended = False
        self._failure: BaseException | None = None
        self._waiter: asyncio.Future[int] | None = None

    @classmethod
    def attach(
        cls, upstream: aiohttp.ClientResponse, response: web.StreamResponse, body_filter: BodyFilter
    ) -> TransportRelay | None:
        """Take over the upstream's transport for its body, or None where that cannot be
        done (no connection of aiohttp's own, a response not written through ours)."""
        connection = upstream.connection
        handler = None if connection is None else connection.protocol
        transport = None if handler is None else handler.transport
        client = response.client_transport if isinstance(response, DeadlineResponse) else None
        if handler is None or transport is None or client is None or transport.is_closing():
            return None
        assert isinstance(response, DeadlineResponse)
        relay = cls(handler, transport, upstream.content, response, client, body_filter)
        relay._take_over()
        return relay

    def _take_over(self) -> None:
        response = self._response
        response.send_headers()  # the client sees the status now, as it would from the upstream
        # aiohttp's read timer, re-armed on each read, makes way for this relay's own; the
        # one it armed at the headers goes at the first read (and measures the same silence
        # until then).
        self._handler.read_timeout = None
        self._transport.set_protocol(self)
        self._arm_read_timer()

    async def run(self) -> None:
        """Wait for the body's end, draining the client whenever it falls behind; raise
        what ended it early."""
        deadline = self._response.request_deadline
        try:
            self._pump()  # what came with the headers
            while True:
                waiter = self._waiter = self._loop.create_future()
                if self._ended:
                    waiter.set_result(_ENDED)
                # --request-timeout: here the upstream is late; below, the client (whose
                # drain has that deadline too, and is then the one to blame).
                async with asyncio.timeout_at(deadline):
                    why = await waiter
                if why == _ENDED:
                    self._raise_outcome()
                    return
                await self._response.drained()
                self._resume()
        finally:
            self._give_back()

    # --- protocol callbacks: aiohttp's protocol first, then take out what it parsed ---------

    def data_received(self, data: bytes) -> None:
        self._handler.data_received(data)
        self._last_read = self._loop.time()
        self._pump()

    def eof_received(self) -> None:
        # aiohttp's protocol lets the transport close (the parser hears of it then).
        self._handler.eof_received()
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self._handler.connection_lost(exc)
        self._pump()

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    # --- the relay -------------------------------------------------------------------------

    def read_now(self) -> None:
        """Take what the payload reader holds now, or the exception it was given."""
        self._pump()

    def _pump(self) -> None:
        """Everything the parser has yielded so far goes through the filter to the client."""
        if self._ended:
            return
        content = self._content
        try:
            while True:
                data = content.read_nowait()  # raises what broke the body
                if not data:
                    break
                out = self._feed(data)
                if out:
                    self._write(out)
                if self._filter.stopped:
                    self._end(None)
                    return
        except BaseException as exc:  # raised again in the task, as aiohttp would raise it
            self._end(exc)
            return
        if content.is_eof():
            self._end(None)
        elif self._client.get_write_buffer_size() > self._client_high_water:
            self._pause()

    def _write(self, data: bytes) -> None:
        client = self._client
        if client.is_closing():
            raise ClientGone
        client.write(b"%x\r\n%b\r\n" % (len(data), data) if self._chunked else data)

    def _pause(self) -> None:
        """The client fell behind: stop reading the upstream until it has drained (the
        read timeout measures the upstream's silence, so it stops too)."""
        self._paused = True
        self._transport.pause_reading()
        self._cancel_read_timer()
        self._wake(_DRAIN)

    def _resume(self) -> None:
        if self._ended:
            return  # it ended while the client drained
        self._paused = False
        if not self._transport.is_closing():
            self._transport.resume_reading()
        self._last_read = self._loop.time()
        self._arm_read_timer()
        self._pump()

    def _end(self, exc: BaseException | None) -> None:
        # The transport goes back at once: at the body's end aiohttp has already put the
        # connection back in its pool, where another request may take it.
        self._failure = exc
        self._give_back()
        self._wake(_ENDED)

    def _wake(self, why: int) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(why)

    def _raise_outcome(self) -> None:
        failure = self._failure
        if failure is not None:
            self._failure = None
            raise failure

    def _arm_read_timer(self) -> None:
        timeout = self._read_timeout
        if timeout:
            self._timer = self._loop.call_at(self._last_read + timeout, self._read_timer_fired)

    def _read_timer_fired(self) -> None:
        """The read timeout's one timer: past it with no byte read, the body has failed;
        otherwise it is armed again from the last read."""
        self._timer = None
        if self._ended or self._read_timeout is None:
            return
        if self._loop.time() < self._last_read + self._read_timeout:
            self._arm_read_timer()
            return
        self._end(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))

    def _cancel_read_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _give_back(self) -> None:
        """The transport, and its read timeout, back to aiohttp's protocol (once)."""
        if self._ended:
            return
        self._ended = True
        self._cancel_read_timer()
        transport = self._transport
        if transport.get_protocol() is self:
            transport.set_protocol(self._handler)
        if self._handler.read_timeout is None:  # unless a new request has set its own
            self._handler.read_timeout = self._read_timeout
        if self._paused and not transport.is_closing():
            self._paused = False
            transport.resume_reading()
