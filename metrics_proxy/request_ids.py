"""Each request bound for the upstream has an id: the client's ``X-Request-Id`` when it is
sane, else a new one. It goes upstream (vLLM takes it for its own request id), back to the
client when the upstream's answer has none, and into every log line about the request.

The id is the request's context (a ContextVar): aiohttp runs each request in a task of its
own, whose context no other request sees."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

__all__ = ["HEADER", "assign", "current"]

HEADER = "X-Request-Id"

# Kept as the client sent it when it is visible ASCII and not long (it is logged and sent
# upstream); otherwise replaced, never repaired.
_SANE = re.compile(r"[!-~]{1,128}")

_CURRENT: ContextVar[str | None] = ContextVar("request_id", default=None)


def assign(given: str | None) -> str:
    """The id of the request being handled: ``given`` (the client's header) if sane, else a
    new one (96 random bits, as hex)."""
    request_id = given if given is not None and _SANE.fullmatch(given) else os.urandom(12).hex()
    _CURRENT.set(request_id)
    return request_id


def current() -> str | None:
    """The id of the request being handled, or None outside one (the proxy's own pages)."""
    return _CURRENT.get()
