"""Error bodies in OpenAI's shape: ``{"error": {"message", "type", "code"}}``."""

from __future__ import annotations

import orjson


def error_body(message: str, error_type: str, code: int | str) -> bytes:
    """The JSON body the openai SDK understands for a failed request."""
    return orjson.dumps({"error": {"message": message, "type": error_type, "code": code}})


def error_event(message: str, error_type: str, code: int | str) -> bytes:
    """The same error as one SSE event, ending a stream the client is already reading: the
    openai SDK raises ``APIError`` when a streamed event carries ``error``."""
    return b"data: " + error_body(message, error_type, code) + b"\n\n"
