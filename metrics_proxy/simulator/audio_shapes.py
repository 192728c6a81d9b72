"""vLLM's audio routes: a transcription's or translation's chunks and answer."""

from __future__ import annotations

from typing import Any

import orjson

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.frames import Steps, data_frame
from metrics_proxy.simulator.openai_shapes import CREATED, usage
from metrics_proxy.simulator.request_fields import vllm_bool

TRANSCRIPTIONS = "/v1/audio/transcriptions"
AUDIO_CHUNKS = {  # path: (chunk id, chunk object)
    TRANSCRIPTIONS: ("trsc-fake", "transcription.chunk"),
    "/v1/audio/translations": ("trsl-fake", "translation.chunk"),
}


def audio_flags(fields: dict[str, Any]) -> tuple[bool, bool, bool]:
    """stream, stream_include_usage, stream_continuous_usage_stats, validated as vLLM does."""
    stream = vllm_bool(fields, "stream")
    include = vllm_bool(fields, "stream_include_usage")
    continuous = vllm_bool(fields, "stream_continuous_usage_stats")
    if (include or continuous) and not stream:
        raise ValueError("Stream options can only be defined when `stream=True`.")
    return stream, include, continuous


def audio_steps(path: str, fields: dict[str, Any], b: Behavior) -> Steps:
    chunk_id, kind = AUDIO_CHUNKS[path]
    model = str(fields.get("model") or "fake-model")
    _, include_usage, continuous_usage = audio_flags(fields)
    with_usage = b.usage == "always" or (b.usage == "honor" and include_usage)
    continuous = with_usage and continuous_usage

    def chunk(choices: list[Any], tokens: int | None) -> bytes:
        obj = {"id": chunk_id, "object": kind, "created": CREATED, "model": model}
        obj["choices"] = choices
        if tokens is not None:
            obj["usage"] = usage(b.prompt_tokens, tokens)
        return data_frame(orjson.dumps(obj), b)

    def step(i: int) -> list[bytes]:
        choice: dict[str, Any] = {"delta": {"content": b.token(i)}}
        if i == b.completion_tokens - 1:  # vLLM sets these on the last chunk only
            choice |= {"finish_reason": b.finish_reason, "stop_reason": None}
        return [chunk([choice], i + 1 if continuous else None)]

    return Steps([], step, [chunk([], b.completion_tokens)] if with_usage else [])


def audio_body(path: str, b: Behavior) -> bytes:
    """A transcription's usage is the audio's duration, never tokens; a translation has none."""
    body: dict[str, Any] = {"text": b.text()}
    if path == TRANSCRIPTIONS:
        body["usage"] = {"type": "duration", "seconds": 3}
    return orjson.dumps(body)
