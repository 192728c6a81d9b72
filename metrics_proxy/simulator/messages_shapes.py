"""Anthropic's Messages API as vLLM serves it: chat underneath, Anthropic's answer and
events on top."""

from __future__ import annotations

from typing import Any

import orjson

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.openai_shapes import error_type

# vLLM's stop_reason for each engine finish; any other finish (abort, ...) gets none.
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_MESSAGE_ID = "chatcmpl-fake"  # vLLM reuses the chat completion's id


def anthropic_error(status: int, message: str) -> bytes:
    return orjson.dumps(
        {"type": "error", "error": {"type": error_type(status), "message": message}}
    )


def _usage(b: Behavior, output_tokens: int) -> dict[str, int]:
    return {"input_tokens": b.prompt_tokens, "output_tokens": output_tokens}


def message_body(model: str, b: Behavior) -> bytes:
    """A non-streamed message: vLLM dumps it without its None members."""
    text = b.text()
    content = [{"type": "text", "text": text}] if text else []
    body: dict[str, Any] = {"id": _MESSAGE_ID, "type": "message", "role": "assistant"}
    body |= {"content": content, "model": model}
    if reason := _STOP_REASONS.get(b.finish_reason):
        body["stop_reason"] = reason
    if b.usage != "never":  # vLLM always reports it; "never" plays another server
        body["usage"] = _usage(b, b.completion_tokens)
    return orjson.dumps(body)


def message_start(model: str, b: Behavior) -> dict[str, Any]:
    # vLLM turns the chat stream's first (role) chunk into this: no content yet.
    message: dict[str, Any] = {"id": _MESSAGE_ID, "content": [], "model": model}
    message |= {"stop_reason": None, "stop_sequence": None}
    if b.usage != "never":
        message["usage"] = _usage(b, 0)
    return {"type": "message_start", "message": message}


def block_start() -> dict[str, Any]:
    block = {"type": "text", "text": ""}
    return {"type": "content_block_start", "content_block": block, "index": 0}


def block_delta(text: str) -> dict[str, Any]:
    delta = {"type": "text_delta", "text": text}
    return {"type": "content_block_delta", "delta": delta, "index": 0}


def message_delta(b: Behavior) -> dict[str, Any]:
    # vLLM turns the chat stream's final usage chunk into this.
    last: dict[str, Any] = {"type": "message_delta"}
    last["delta"] = {"stop_reason": _STOP_REASONS.get(b.finish_reason)}
    if b.usage != "never":
        last["usage"] = _usage(b, b.completion_tokens)
    return last


def stream_error() -> dict[str, Any]:
    """What vLLM's converter ends a stream with on any failure."""
    error = {"type": "internal_error", "message": "fake engine failure"}
    return {"type": "error", "error": error}
