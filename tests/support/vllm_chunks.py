"""A vLLM chat stream's chunks, as recorded, for tests that decode or read them."""

from __future__ import annotations

import orjson

HEAD = b'{"id":"chatcmpl-5e1f","object":"chat.completion.chunk","created":1732650000,"model":"m",'
# A vLLM chat stream with include_usage, as recorded: role preamble, content, finish, usage.
PAYLOADS = [
    HEAD + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]}',
    HEAD + b'"choices":[{"index":0,"delta":{"content":"Caf\xc3\xa9"},'
    b'"logprobs":null,"finish_reason":null}]}',
    HEAD + b'"choices":[{"index":0,"delta":{"content":" \\"ol\\u00e9\\"\\n"},'
    b'"logprobs":null,"finish_reason":null}]}',
    HEAD + b'"choices":[{"index":0,"delta":{"content":" \xf0\x9f\x98\x80"},'
    b'"logprobs":null,"finish_reason":null}]}',
    HEAD + b'"choices":[{"index":0,"delta":{"content":""},"logprobs":null,'
    b'"finish_reason":"stop","stop_reason":null}]}',
    HEAD + b'"choices":[],"usage":{"prompt_tokens":12,"total_tokens":16,"completion_tokens":4}}',
    b"[DONE]",
]


def chat_event(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
    """One SSE event of a chat stream, in vLLM's chunk shape, for tests that write raw streams."""
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
