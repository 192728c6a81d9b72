"""Raw HTTP/1.1 peers on loopback, for what aiohttp's own servers and clients will not do:
misframe a response, ignore ``Expect``, stream without end, never read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType

from multidict import CIMultiDict


@dataclass(frozen=True)
class RawMessage:
    """A request or a response as it crossed the wire: its first line, headers and body."""

    start_line: str
    headers: CIMultiDict[str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def target(self) -> str:
        return self.start_line.split(" ", 2)[1]


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, CIMultiDict[str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    start_line, *lines = head[:-4].split("\r\n")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines:
        name, _, value = line.partition(":")
        headers.add(name.strip(), value.strip())
    return start_line, headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        body += (await reader.readexactly(size + 2))[:-2]
    await reader.readuntil(b"\r\n")  # the empty trailer section
    return body


async def read_message(reader: asyncio.StreamReader, *, body: bool = True) -> RawMessage:
    """One message framed as its headers say: chunked, by Content-Length, or empty; with
    ``body=False`` only its head, the body left unread."""
    start_line, headers = await _read_head(reader)
    if not body:
        return RawMessage(start_line, headers, b"")
    if headers.get("Transfer-Encoding", "").lower() == "chunked":
        return RawMessage(start_line, headers, await _read_chunked(reader))
    length = int(headers.get("Content-Length", "0"))
    return RawMessage(start_line, headers, await reader.readexactly(length))


def response_head(status: int, *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *headers, "", ""]
    return "\r\n".join(lines).encode()


Answer = Callable[[RawMessage, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """A loopback upstream that reads one request per connection, its whole body unless
    ``read_body`` is False (an ``Expect`` header changes nothing: it waits for the body),
    lets ``answer`` write anything, then closes. ``cut`` is set when the proxy closes a
    connection first."""

    answer: Answer
    read_body: bool = True
    requests: list[RawMessage] = field(default_factory=list)
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _open: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            request = await read_message(reader, body=self.read_body)
            self.requests.append(request)
            await self.answer(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            self.cut.set()
        finally:
            self._open.discard(writer)
            writer.close()

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._open:
            writer.transport.abort()
        await self._server.wait_closed()
