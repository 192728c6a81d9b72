"""Writing to the client: deadlines on writes, and what a client that left looks like."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

# A chunk's size line and CRLFs, which aiohttp adds to what the proxy writes.
_CHUNK_FRAMING = 16


class ClientGone(ConnectionError):
    """The client closed its connection while the proxy was answering it."""


class ClientStalled(ClientGone):
    """The client stopped reading: a write to it waited past its deadline, and the proxy cut
    the connection. To the accounting it is a client that left."""


async def write_guard(write: Awaitable[object]) -> None:
    """Await a write to the client, turning its failure into ClientGone."""
    try:
        await write
    except ConnectionResetError:
        raise ClientGone from None


def abort_connection(request: web.Request) -> None:
    """Cut the client's connection: a body cut short must not look complete."""
    transport = request.transport
    if transport is not None:
        transport.abort()


@dataclass(frozen=True, slots=True)
class ClientWriteLimits:
    """How long writes to a client may wait for it to read: each write (--client-write-timeout),
    and all of them within the whole exchange (--request-timeout); None = no limit."""

    stall: float | None
    request: float | None


class DeadlineResponse(web.StreamResponse):
    """A streamed response whose writes cannot wait on a client forever.

    aiohttp's write awaits the transport's drain with no deadline, so a client that stops
    reading would keep its request, and its concurrency slot, as long as it stays connected.
    A write only waits while asyncio has paused writing, and asyncio resumes as soon as the
    buffer is down to its low-water mark: a write that leaves the buffer within that mark
    cannot wait and goes untimed, so a client that keeps up costs no timer per chunk. Any
    other write gets a deadline; past it the connection is cut and ClientStalled raised.
    """

    __slots__ = ("_limits", "_request_deadline", "_transport", "_untimed_up_to", "_writer")

    def __init__(
        self,
        *,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        limits: ClientWriteLimits,
        started: float,
    ) -> None:
        """``started``: the loop time the exchange began, which --request-timeout counts from."""
        super().__init__(status=status, reason=reason, headers=headers)
        self._limits = limits
        self._request_deadline = None if limits.request is None else started + limits.request
        self._transport: asyncio.Transport | None = None
        self._writer: AbstractStreamWriter | None = None
        self._untimed_up_to = -1  # buffered bytes a write may leave and go untimed

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        writer = self._writer = await super().prepare(request)
        transport = request.transport
        if transport is not None:
            self._transport = transport
            unlimited = self._limits.stall is None and self._request_deadline is None
            self._untimed_up_to = (
                sys.maxsize if unlimited else transport.get_write_buffer_limits()[0]
            )
        return writer

    # --- for a relay that writes to the client's transport itself (relay.TransportRelay) ---

    @property
    def client_transport(self) -> asyncio.Transport | None:
        """The client's transport, once prepared, while it is open."""
        transport = self._transport
        return None if transport is None or self._writer is None else transport

    @property
    def chunked_body(self) -> bool:
        """Whether the body goes in HTTP/1.1 chunks (else as it is, to a length or the close)."""
        return bool(getattr(self._writer, "chunked", False))

    @property
    def request_deadline(self) -> float | None:
        """The loop time --request-timeout ends the exchange at, or None."""
        return self._request_deadline

    def send_headers(self) -> None:
        """Put the status line and headers on the wire now (aiohttp holds them back to go
        with the first write of the body)."""
        assert self._writer is not None
        self._writer.send_headers()

    async def drained(self) -> None:
        """Wait, within the write deadline, for the client to read what is buffered for it."""
        assert self._writer is not None
        await write_guard(self._timed(self._writer.drain()))

    # Plain methods handing back aiohttp's own coroutine: no extra frame on the per-chunk path.
    def write(self, data: bytes | bytearray | memoryview) -> Coroutine[Any, Any, None]:
        write = super().write(data)
        return write if self._cannot_wait(len(data)) else self._timed(write)

    def write_eof(self, data: bytes = b"") -> Coroutine[Any, Any, None]:
        write_eof = super().write_eof(data)  # it always drains: the same rule
        return write_eof if self._cannot_wait(len(data)) else self._timed(write_eof)

    def _cannot_wait(self, length: int) -> bool:
        transport = self._transport
        return (
            transport is not None
            and transport.get_write_buffer_size() + length + _CHUNK_FRAMING <= self._untimed_up_to
        )

    async def _timed(self, write: Coroutine[Any, Any, None]) -> None:
        try:
            async with asyncio.timeout_at(self._deadline()):
                await write
        except TimeoutError:
            if self._transport is not None:
                self._transport.abort()
            raise ClientStalled from None

    def _deadline(self) -> float | None:
        stall, request = self._limits.stall, self._request_deadline
        if stall is None:
            return request
        deadline = asyncio.get_running_loop().time() + stall
        return deadline if request is None else min(deadline, request)
