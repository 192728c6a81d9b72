"""Server-sent events as the simulator frames them: line endings, keep-alive comments and
named events as its Behavior asks, and a stream in its three parts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from metrics_proxy.simulator.behavior import Behavior


def _eol(b: Behavior) -> bytes:
    return b"\r\n" if b.crlf else b"\n"


def data_frame(data: bytes, b: Behavior) -> bytes:
    """One ``data:`` event, a ``: ping`` comment before it when ``b.keepalive``."""
    eol = _eol(b)
    return (b": ping" + eol + eol if b.keepalive else b"") + b"data: " + data + eol + eol


def named_frame(name: str, data: bytes, b: Behavior) -> bytes:
    """One ``event:`` + ``data:`` event (Anthropic's), a ``: ping`` before it when asked."""
    eol = _eol(b)
    out = b": ping" + eol + eol if b.keepalive else b""
    return out + b"event: " + name.encode() + eol + b"data: " + data + eol + eol


@dataclass(frozen=True)
class Steps:
    """An event stream's frames: those before the first token, those of token step ``i``
    (``0 <= i < completion_tokens``), those after the last token."""

    first: list[bytes]
    step: Callable[[int], list[bytes]]
    last: list[bytes]
