"""Tests for the chat and completions API modules: what each streamed chunk tells the meters."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from metrics_proxy.apis import chat as chat_api
from metrics_proxy.apis import completions as completions_api
from metrics_proxy.apis.base import EventFacts as ChunkFacts
from metrics_proxy.apis.base import Usage
from metrics_proxy.apis.openai import chunk_facts as read_chunk
from tests.support.vllm_chunks import PAYLOADS


def either_output(choice: dict[str, Any]) -> bool:
    return chat_api.carries_output(choice) or completions_api.carries_output(choice)


def chunk_facts(payload: bytes) -> ChunkFacts | None:
    """The shared chunk reading, with either API's idea of output."""
    return read_chunk(either_output, payload)


def facts(
    outputs: tuple[int, ...] = (),
    finish_reason: str | None = None,
    usage: Usage | None = None,
    usage_only: bool = False,
    error: bool = False,
    usage_key: bool | None = None,
) -> ChunkFacts:
    key = usage is not None if usage_key is None else usage_key
    return ChunkFacts(False, outputs, finish_reason, usage, usage_only, error, key)


def chat(*deltas: object, **extra: object) -> bytes:
    choices = [{"index": i, "delta": d, "finish_reason": None} for i, d in enumerate(deltas)]
    return orjson.dumps({"object": "chat.completion.chunk", "choices": choices, **extra})


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (PAYLOADS[0], facts()),
        (PAYLOADS[1], facts((0,))),
        (PAYLOADS[4], facts(finish_reason="stop")),
        (PAYLOADS[5], facts(usage=Usage(12, 4), usage_only=True)),
        (chat({"reasoning_content": "hm"}), facts((0,))),
        (chat({"reasoning": "hm"}), facts((0,))),
        (chat({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}), facts((0,))),
        (chat({"tool_calls": []}, {"content": "x"}), facts((1,))),
        (chat({}, {"content": None}, {"content": 5}), facts()),
        (b'{"choices":[{"delta":{"content":"x"}},{"index":3,"text":"y"}]}', facts((0, 3))),
        (b'{"choices":[{"index":true,"text":"y"},{"index":"2","text":"z"}]}', facts((0, 0))),
        (b'{"object":"text_completion","choices":[{"index":0,"text":"hi"}]}', facts((0,))),
        (b'{"choices":[{"index":0,"text":"","finish_reason":"length"}]}', facts((), "length")),
        (
            b'{"choices":[{"index":0,"finish_reason":"stop"},{"index":1,"finish_reason":null}]}',
            facts(finish_reason="stop"),
        ),
        (b'{"choices":[],"usage":{"prompt_tokens":3}}', facts(usage=Usage(3, 0), usage_only=True)),
        (
            chat({"content": "a"}, usage={"prompt_tokens": 3, "completion_tokens": 1}),
            facts((0,), usage=Usage(3, 1)),
        ),
        (b'{"choices":[],"usage":{"prompt_tokens":"3"}}', facts(usage_key=True)),
        (b'{"choices":[],"usage":{"prompt_tokens":-1}}', facts(usage_key=True)),
        (b'{"choices":[],"usage":null}', facts(usage_key=True)),
        (chat({"content": "a"}, usage=None), facts((0,), usage_key=True)),
        (b'{"error":{"message":"boom","code":500}}', facts(error=True)),
        (b'{"choices":{"0":{}}}', facts()),
        (b'{"choices":[1,"x",null,[]]}', facts()),
        (b'{"choices":[{"delta":"hi"},{"delta":["x"]},{"delta":null}]}', facts()),
    ],
)
def test_chunk_facts(payload: bytes, expected: ChunkFacts) -> None:
    assert chunk_facts(payload) == expected


@pytest.mark.parametrize("payload", [b"[DONE]", b" [DONE]\n", b"\t[DONE]"])
def test_chunk_facts_done(payload: bytes) -> None:
    result = chunk_facts(payload)
    assert result is not None
    assert result.done
    assert result.outputs == ()


@pytest.mark.parametrize(
    "payload",
    [
        *(b"", b"[DONE", b"[done]", b"\xff\xfe", b"{", b"[1,2]", b'"x"', b"null", b"42", b"{]}"),
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,  # crashes orjson < 3.9.15 unguarded
    ],
)
def test_chunk_facts_rejects_without_raising(payload: bytes) -> None:
    assert chunk_facts(payload) is None


@pytest.mark.parametrize(
    ("choice", "in_chat", "in_completions"),
    [
        ({"delta": {"content": "x"}}, True, False),
        ({"delta": {"reasoning_content": "x"}}, True, False),
        ({"delta": {"tool_calls": [{}]}}, True, False),
        ({"text": "x"}, False, True),
        ({"text": ""}, False, False),
        ({"delta": {"content": ""}}, False, False),
    ],
)
def test_each_api_knows_its_own_output(
    choice: dict[str, Any], in_chat: bool, in_completions: bool
) -> None:
    assert chat_api.carries_output(choice) is in_chat
    assert completions_api.carries_output(choice) is in_completions
