"""Cohere's v2 chat as vLLM serves it: typed events when streamed, its answer object when not."""

from __future__ import annotations

from typing import Any

import orjson

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.frames import Steps, data_frame

_COHERE_WORDS = {"stop": "COMPLETE", "length": "MAX_TOKENS", "tool_calls": "TOOL_CALL"}


def _usage(b: Behavior) -> dict[str, Any]:
    # Cohere's usage fields are floats: vLLM's pydantic writes 7 as 7.0.
    counts = {"input_tokens": float(b.prompt_tokens), "output_tokens": float(b.completion_tokens)}
    return {"billed_units": counts, "tokens": counts}


def _end(b: Behavior) -> dict[str, Any]:
    """The message-end's delta: Cohere's finish word and the usage, or the error."""
    if b.finish_reason == "error":
        return {"error": "fake error", "finish_reason": "ERROR"}
    delta: dict[str, Any] = {"finish_reason": _COHERE_WORDS.get(b.finish_reason, "COMPLETE")}
    if b.usage != "never":
        delta["usage"] = _usage(b)
    return delta


def cohere_steps(b: Behavior) -> Steps:
    """Cohere's typed events, `type` last as vLLM's pydantic writes them."""
    start = {"id": "cohere-fake", "delta": {"message": {"role": "assistant"}}}
    block = {"message": {"content": {"type": "text", "text": ""}}}
    first: list[dict[str, Any]] = [start | {"type": "message-start"}]
    first.append({"index": 0, "delta": block, "type": "content-start"})

    def step(i: int) -> list[bytes]:
        delta = {"message": {"content": {"text": b.token(i)}}}
        event = {"index": 0, "delta": delta, "type": "content-delta"}
        return [data_frame(orjson.dumps(event), b)]

    end = {"id": "cohere-fake", "delta": _end(b), "type": "message-end"}
    last = [{"index": 0, "type": "content-end"}, end]
    return Steps(
        [data_frame(orjson.dumps(e), b) for e in first],
        step,
        [data_frame(orjson.dumps(e), b) for e in last],
    )


def cohere_body(b: Behavior) -> bytes:
    message = {"role": "assistant", "content": [{"type": "text", "text": b.text()}]}
    end = _end(b)
    answer = {"id": "cohere-fake", "finish_reason": end["finish_reason"], "message": message}
    return orjson.dumps(answer | ({"usage": end["usage"]} if "usage" in end else {}))
