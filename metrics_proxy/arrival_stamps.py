"""When a request reached this machine: the kernel's receive time of the read that completed
its headers, so that the proxy's clock starts before the time the request waited in the proxy's
socket for a turn of the event loop (proxy queueing, which a clock started by the handler
cannot see).

:class:`ArrivalStamps` stands in front of aiohttp's protocol on each client connection as a
``BufferedProtocol``: the transport asks it for a buffer just before each read, and while the
connection awaits a request it peeks at the bytes about to be read with ``recvmsg(MSG_PEEK)``,
which returns the kernel's ``SO_TIMESTAMPNS`` of the last segment among them. The request
takes that time when it starts (:func:`take_arrival`), and reads are not peeked at again until
it is answered: one peek per request, nothing per streamed chunk. Wherever the kernel gives
no time (not Linux, uvloop's sockets, a Unix socket, a pipelined request read during the one
before it), the clock starts when the handler runs, as before.

Why the read that completed the headers, not the request's first byte: a client that sends
its headers slowly would otherwise put its upload time into the proxy's TTFT; vLLM's own clock
starts when its handler runs, after the headers are complete. The peek covers the whole read,
so the time is that of the last segment of it: never before the headers were all there.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar

from aiohttp import web

# Linux's SO_TIMESTAMPNS (asm-generic and x86; SCM_TIMESTAMPNS is the same number); Python's
# socket module does not name it. A struct timespec of CLOCK_REALTIME comes with each read.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_BUFFER_SIZE = 256 * 1024  # what asyncio's transport reads at once (its max_size)
_unpack_timespec = _TIMESPEC.unpack_from
_PEEK = socket.MSG_PEEK
_SOL_SOCKET = socket.SOL_SOCKET


def _stamping_socket(transport: asyncio.BaseTransport) -> socket.socket | None:
    """The connection's socket with kernel receive times turned on, or None where it has none
    to give: the socket asyncio wraps is private (``_sock``), so anything else (uvloop's, a
    later asyncio's) falls back to the handler's clock."""
    if not sys.platform.startswith("linux"):
        return None
    wrapped = transport.get_extra_info("socket")
    raw = getattr(wrapped, "_sock", None)
    if not isinstance(raw, socket.socket) or raw.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return None
    return raw


class ArrivalStamps(asyncio.BufferedProtocol):
    """One client connection's protocol: each read goes on to aiohttp's protocol
    (``handler``); while the connection awaits a request, each is peeked at first for its
    kernel receive time."""

    __slots__ = ("_armed", "_buffer", "_buffers", "_handler", "_received", "_socket")

    def __init__(self, handler: asyncio.Protocol, buffer: memoryview) -> None:
        self._handler = handler
        self._socket: socket.socket | None = None
        self._armed = False  # peeking: awaiting a request
        # Shared by every connection of a site: each read is copied out of it at once, in
        # the same callback, so no two connections' reads are ever in it together.
        self._buffer = buffer
        self._buffers = (buffer,)
        self._received: float | None = None  # the latest read's (realtime), until taken

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)
        self._socket = _stamping_socket(transport)
        if self._socket is None:
            transport.set_protocol(self._handler)  # no kernel times here: aiohttp's alone
            return
        self._armed = True

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._armed:
            self._received = self._peek()
        return self._buffer

    def _peek(self) -> float | None:
        """When (CLOCK_REALTIME) the last segment of the bytes about to be read reached the
        kernel: peeked at into the buffer the read then fills with the same bytes. Written
        for speed (half the cost of a loop over the ancillary data)."""
        assert self._socket is not None
        try:
            ancillary = self._socket.recvmsg_into(self._buffers, _ANCILLARY_SPACE, _PEEK)[1]
        except OSError:
            return None
        if not ancillary:
            return None
        level, kind, data = ancillary[0]  # the one kind of ancillary data turned on
        if kind != SO_TIMESTAMPNS or level != _SOL_SOCKET or len(data) < _TIMESPEC.size:
            return None
        seconds, nanoseconds = _unpack_timespec(data)
        received: float = seconds + nanoseconds * 1e-9
        return received

    def buffer_updated(self, nbytes: int) -> None:
        self._handler.data_received(bytes(self._buffer[:nbytes]))

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._armed, self._socket = False, None
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def take(self) -> float | None:
        """A request starts: the receive time of the last read before it (once); reads are
        not peeked at until :meth:`rearm`."""
        received, self._received = self._received, None
        self._armed = False
        return received

    def rearm(self) -> None:
        """The request is done: the next one's reads are peeked at."""
        self._armed = self._socket is not None


# The request being handled's arrival: aiohttp runs each request in a task whose context no
# other request sees (as request_ids does).
_ARRIVAL: ContextVar[float | None] = ContextVar("arrival", default=None)


def take_arrival(
    request: web.Request, clock: Callable[[], float]
) -> tuple[float, ArrivalStamps | None]:
    """When ``request`` arrived on ``clock``: the kernel's receive time of the read that
    completed its headers where there is one, else now; and its connection's stamps, to
    :meth:`~ArrivalStamps.rearm` when it is answered. Asked once, as the request starts;
    :func:`arrival_of` answers again."""
    now = clock()
    transport = request.transport
    stamps = None if transport is None else transport.get_protocol()
    if not isinstance(stamps, ArrivalStamps):
        _ARRIVAL.set(now)
        return now, None
    received = stamps.take()
    # The clocks' rates agree; only the age of the bytes matters, not where either clock is.
    arrival = now if received is None else now - max(time.time() - received, 0.0)
    _ARRIVAL.set(arrival)
    return arrival, stamps


def arrival_of(clock: Callable[[], float]) -> float:
    """The arrival :func:`take_arrival` gave the request being handled (now, if none did)."""
    arrival = _ARRIVAL.get()
    return clock() if arrival is None else arrival


class ArrivalSite(web.BaseSite):
    """aiohttp's TCPSite, but each client connection begins with :class:`ArrivalStamps` in
    front of the runner's protocol (the sites are aiohttp's extension point for how
    connections are accepted)."""

    __slots__ = ("_buffer", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int) -> None:
        super().__init__(runner)
        self._host, self._port = host, port
        self._buffer = memoryview(bytearray(_BUFFER_SIZE))  # the reads of all its connections

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ArrivalStamps(server(), self._buffer),
            self._host,
            self._port,
            backlog=self._backlog,
        )
