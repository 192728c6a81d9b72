"""When a request reached this machine: the kernel's receive time of the read that completed
its headers, so that the proxy's clock starts before the time the request waited in the proxy's
socket for a turn of the event loop (proxy queueing, which a clock started by the handler
cannot see).

While a client connection awaits a request, :class:`ArrivalStamps` stands in front of
aiohttp's protocol as a ``BufferedProtocol``: the transport asks it for a buffer just before
each read, and it peeks at the bytes about to be read with ``recvmsg(MSG_PEEK)``, which returns
the kernel's ``SO_TIMESTAMPNS`` of the last segment among them. The handler takes that time
when the request starts (:func:`request_arrival`) and the connection goes straight to
aiohttp's protocol until the request is done (:func:`request_done`): one peek per request, no
cost per streamed chunk. Wherever the kernel gives no time (not Linux, uvloop's sockets, a
Unix socket, a pipelined request read during the one before it), the clock starts when the
handler runs, as before.

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

from aiohttp import web

# Linux's SO_TIMESTAMPNS (asm-generic and x86; SCM_TIMESTAMPNS is the same number); Python's
# socket module does not name it. A struct timespec of CLOCK_REALTIME comes with each read.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_BUFFER_SIZE = 64 * 1024  # what one read of a request's headers takes at most


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


def _received_at(raw: socket.socket, buffer: memoryview) -> float | None:
    """The monotonic time the last segment of the bytes waiting on ``raw`` reached the kernel,
    peeked at into ``buffer`` (the read that follows takes the same bytes)."""
    try:
        _, ancillary, _, _ = raw.recvmsg_into([buffer], _ANCILLARY_SPACE, socket.MSG_PEEK)
    except OSError:
        return None
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            age: float = time.time() - (seconds + nanoseconds * 1e-9)
            return time.monotonic() - max(age, 0.0)
    return None


class ArrivalStamps(asyncio.BufferedProtocol):
    """One client connection's protocol while it awaits a request: each read, peeked at
    first for its kernel receive time, goes on to aiohttp's protocol (``handler``)."""

    __slots__ = ("_buffer", "_handler", "_received", "_socket", "_transport")

    def __init__(self, handler: asyncio.Protocol) -> None:
        self._handler = handler
        self._transport: asyncio.Transport | None = None
        self._socket: socket.socket | None = None
        self._buffer = memoryview(bytearray(_BUFFER_SIZE))
        self._received: float | None = None  # the latest read's, until a request takes it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._handler.connection_made(transport)
        raw = _stamping_socket(transport)
        if raw is None or not isinstance(transport, asyncio.Transport):
            transport.set_protocol(self._handler)  # no kernel times here: aiohttp's alone
            return
        self._transport, self._socket = transport, raw

    def get_buffer(self, sizehint: int) -> memoryview:
        assert self._socket is not None
        self._received = _received_at(self._socket, self._buffer)
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._handler.data_received(bytes(self._buffer[:nbytes]))

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = self._socket = None
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def take(self) -> float | None:
        """A request starts: the receive time of the last read before it (once), and the
        connection is aiohttp's alone until :meth:`rearm`."""
        received, self._received = self._received, None
        if self._transport is not None:
            self._transport.set_protocol(self._handler)
        return received

    def rearm(self) -> None:
        """The request is done: the next one's reads are peeked at again."""
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.set_protocol(self)


_STAMPS = web.RequestKey("arrival_stamps", ArrivalStamps)
_ARRIVAL = web.RequestKey("arrival", float)


def request_arrival(request: web.Request, clock: Callable[[], float]) -> float:
    """When ``request`` arrived on ``clock``: the kernel's receive time of the read that
    completed its headers where there is one, else now; the same answer every time it is
    asked about one request. Pair with :func:`request_done`."""
    arrival = request.get(_ARRIVAL)
    if arrival is None:
        arrival = request[_ARRIVAL] = _arrival(request, clock)
    return arrival


def _arrival(request: web.Request, clock: Callable[[], float]) -> float:
    now = clock()
    transport = request.transport
    stamps = None if transport is None else transport.get_protocol()
    if not isinstance(stamps, ArrivalStamps):
        return now
    request[_STAMPS] = stamps
    received = stamps.take()
    if received is None:
        return now
    return now - max(time.monotonic() - received, 0.0)


def request_done(request: web.Request) -> None:
    """``request`` is answered: its connection's next request is stamped again."""
    stamps = request.get(_STAMPS)
    if stamps is not None:
        stamps.rearm()


class ArrivalSite(web.BaseSite):
    """aiohttp's TCPSite, but each client connection begins with :class:`ArrivalStamps` in
    front of the runner's protocol (the sites are aiohttp's extension point for how
    connections are accepted)."""

    __slots__ = ("_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int) -> None:
        super().__init__(runner)
        self._host, self._port = host, port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            lambda: ArrivalStamps(server()), self._host, self._port, backlog=self._backlog
        )
