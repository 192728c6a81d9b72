"""When a request reached this machine: the kernel's receive time of the read that completed
its headers, so that the proxy's clock starts before the time the request waited in the proxy's
socket for a turn of the event loop (proxy queueing, which a clock started by the handler
cannot see).

:class:`ArrivalStamps` stands in front of aiohttp's protocol on each client connection as a
``BufferedProtocol``: the transport asks it for a buffer just before each read, and it peeks
at the bytes about to be read with ``recvmsg(MSG_PEEK)``, which returns the kernel's
``SO_TIMESTAMPNS`` of the last segment among them. A request takes the latest read's time as
it starts (:func:`take_arrival`). A client connection reads its requests, not the streams it
is sent: one peek per request, nothing per streamed chunk. Wherever the kernel gives no time
(not Linux, uvloop's sockets, a Unix socket, a pipelined request read along with the one
before it), the clock starts when the handler runs, as before.

Why the read that completed the headers, not the request's first byte: a client that sends
its headers slowly would otherwise put its upload time into the proxy's TTFT; vLLM's own clock
starts when its handler runs, after the headers are complete. The peek covers the whole read,
so the time is that of the last segment of it: never before the headers were all there.
"""

from __future__ import annotations

import asyncio
import mmap
import socket
import struct
import sys
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from asyncio.trsock import TransportSocket  # what asyncio.Server.sockets holds

# Linux's SO_TIMESTAMPNS (asm-generic and x86; SCM_TIMESTAMPNS is the same number); Python's
# socket module does not name it. A struct timespec of CLOCK_REALTIME comes with each read.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_BUFFER_SIZE = 256 * 1024  # what asyncio's transport reads at once (its max_size)
_unpack_timespec = _TIMESPEC.unpack_from
_PEEK = socket.MSG_PEEK
_SOL_SOCKET = socket.SOL_SOCKET


def _turn_on(sock: socket.socket | TransportSocket) -> bool:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


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
    return raw if _turn_on(raw) else None


class ArrivalStamps(asyncio.BufferedProtocol):
    """One client connection's protocol: each read is peeked at for its kernel receive time,
    then goes on to aiohttp's protocol (``handler``)."""

    __slots__ = ("_buffer", "_buffers", "_handler", "_received", "_socket")

    def __init__(self, handler: asyncio.Protocol, buffer: memoryview) -> None:
        self._handler = handler
        self._socket: socket.socket | None = None
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

    def get_buffer(self, sizehint: int) -> memoryview:
        """The buffer the transport reads into, once the bytes it is about to read have been
        peeked at for the time the last segment of them reached the kernel (CLOCK_REALTIME);
        the same bytes land in it again. Written for speed: a client's connection reads about
        once per request."""
        assert self._socket is not None
        try:
            ancillary = self._socket.recvmsg_into(self._buffers, _ANCILLARY_SPACE, _PEEK)[1]
        except OSError:
            return self._buffer  # nothing to read after all: neither will the transport find any
        self._received = None
        if ancillary:
            level, kind, data = ancillary[0]  # the one kind of ancillary data turned on
            if kind == SO_TIMESTAMPNS and level == _SOL_SOCKET and len(data) >= _TIMESPEC.size:
                seconds, nanoseconds = _unpack_timespec(data)
                self._received = seconds + nanoseconds * 1e-9
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._handler.data_received(bytes(self._buffer[:nbytes]))

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._socket = None
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def take(self) -> float | None:
        """A request starts: the receive time of the latest read since the request before
        it started, if there was one: never earlier than the read that completed this one's
        headers, as the reads come in order. None for a request read along with the one
        before (pipelined): it waited behind that one, and its clock starts when the handler
        runs."""
        received, self._received = self._received, None
        return received


# Longer than any request waits in the proxy's socket for its loop: an older stamp is a wall
# clock that stepped between the kernel's stamp and the handler.
_MAX_AGE = 60.0

# The request being handled's arrival: aiohttp runs each request in a task whose context no
# other request sees (as request_ids does).
_ARRIVAL: ContextVar[float | None] = ContextVar("arrival", default=None)


def take_arrival(request: web.Request, clock: Callable[[], float]) -> float:
    """When ``request`` arrived on ``clock``: the kernel's receive time of the read that
    completed its headers where there is one, else now. Asked once, as the request starts;
    :func:`arrival_of` answers again."""
    now = clock()
    transport = request.transport
    stamps = None if transport is None else transport.get_protocol()
    received = stamps.take() if isinstance(stamps, ArrivalStamps) else None
    # The clocks' rates agree; only the age of the bytes matters, not where either clock is.
    # The age comes from the wall clock, which a time step can move: an age that no request
    # could have (beyond _MAX_AGE, or negative) is no age, and the clock starts now.
    age = 0.0 if received is None else time.time() - received
    arrival = now - age if 0.0 < age <= _MAX_AGE else now
    _ARRIVAL.set(arrival)
    return arrival


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
        # The reads of all its connections, in pages of their own: a long-lived bytearray this
        # size on the heap makes each of asyncio's 256 KiB recv allocations (for every
        # upstream read) grow and trim the heap again (measured: 100 -> 150 µs of CPU per
        # chunk at 1k chunks/s).
        self._buffer = memoryview(mmap.mmap(-1, _BUFFER_SIZE))

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
        if sys.platform.startswith("linux"):
            # On the listening sockets too: the kernel stamps what it receives only while some
            # socket asks (and turns that on a moment later), so the first bytes of a new
            # connection have a time as well; accepted sockets inherit the setting.
            for listening in self._server.sockets:
                _turn_on(listening)
