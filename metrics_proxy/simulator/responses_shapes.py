"""OpenAI's Responses API (/v1/responses) as vLLM 0.33 serves it: the response object in
vLLM's member order, and its stream's events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.openai_shapes import CREATED
from metrics_proxy.simulator.request_fields import vllm_bool

DELTA = "response.output_text.delta"


def response_status(finish: str) -> tuple[str, dict[str, str] | None]:
    """The status (and incomplete_details) vLLM gives an engine finish reason; "failed",
    "cancelled" and "content_filter" stand for themselves, for tests."""
    if finish in ("length", "content_filter"):
        return "incomplete", {"reason": "max_output_tokens" if finish == "length" else finish}
    if finish in ("failed", "cancelled", "error"):
        return "failed" if finish == "error" else finish, None
    return "completed", None


def _usage(b: Behavior) -> dict[str, Any] | None:
    if b.usage == "never":
        return None
    p, c = b.prompt_tokens, b.completion_tokens
    return {
        "input_tokens": p, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": p + c,
    }  # fmt: skip


def _output(b: Behavior) -> list[dict[str, Any]]:
    part: dict[str, Any] = {
        "annotations": [],
        "text": b.text(),
        "type": "output_text",
        "logprobs": None,
    }
    return [{"id": "msg_fake", "content": [part], "role": "assistant", "type": "message"}]


def response(
    resp_id: str, fields: dict[str, Any], status: str, b: Behavior | None = None
) -> dict[str, Any]:
    """A response object in vLLM's member order; with ``b``, the finished one: its output,
    usage and the status ``b.finish_reason`` stands for."""
    details: dict[str, str] | None = None
    output: list[dict[str, Any]] = []
    usage = None
    if b is not None:
        status, details = response_status(b.finish_reason)
        output, usage = _output(b), _usage(b)
    return {
        "id": resp_id, "created_at": CREATED, "incomplete_details": details,
        "instructions": None, "metadata": None, "model": str(fields.get("model") or "fake-model"),
        "object": "response", "output": output, "parallel_tool_calls": True,
        "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
        "background": vllm_bool(fields, "background"),
        "max_output_tokens": fields.get("max_output_tokens") or 1024, "max_tool_calls": None,
        "previous_response_id": None, "prompt": None, "reasoning": None,
        "service_tier": "auto", "status": status, "text": None, "top_logprobs": None,
        "truncation": "disabled", "usage": usage, "user": None,
    }  # fmt: skip


def response_events(resp_id: str, fields: dict[str, Any], b: Behavior) -> Iterator[dict[str, Any]]:
    """vLLM's events for one response, unpaced. The last is ``response.completed`` (vLLM
    sends it for an incomplete response too), OpenAI's ``response.failed`` for "failed", or
    an ``error`` event for "error"."""
    started = response(resp_id, fields, "in_progress")
    yield {"type": "response.created", "response": started}
    yield {"type": "response.in_progress", "response": started}
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    yield {"type": "response.content_part.added", "item_id": "msg_fake", "part": part}
    for i in range(b.completion_tokens):
        yield {"type": DELTA, "item_id": "msg_fake", "delta": b.token(i)}
    if b.finish_reason == "error":
        yield {"type": "error", "code": "server_error", "message": "fake error", "param": None}
        return
    final = response(resp_id, fields, "", b)
    kind = "response.failed" if final["status"] == "failed" else "response.completed"
    yield {"type": kind, "response": final}


def event_encoder(b: Behavior) -> Callable[[dict[str, Any], int], bytes]:
    """Each event as its named SSE frame, with its ``sequence_number``."""
    eol = b"\r\n" if b.crlf else b"\n"

    def encode(event: dict[str, Any], number: int) -> bytes:
        data = orjson.dumps({**event, "sequence_number": number})
        kind: str = event["type"]
        return b"event: " + kind.encode() + eol + b"data: " + data + eol + eol

    return encode


def is_delta(frame: bytes) -> bool:
    """Whether an encoded event is a text delta (the ones faults and pacing count)."""
    return DELTA.encode() in frame.split(b"\n", 1)[0]
