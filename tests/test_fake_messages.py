"""The fake upstream speaks vLLM's Messages API (Anthropic's, over vLLM's chat) as vLLM does."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from tests.support.fake_upstream import BEHAVIOR_HEADER, FAKE_STATE, make_fake_upstream

Client = TestClient[web.Request, web.Application]
MESSAGES = "/v1/messages"
REQUEST = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_fake_upstream())


def named_events(raw: bytes) -> list[tuple[str, Any]]:
    """Decode a plain (\\n-separated, comment-free) stream of `event:` + `data:` events."""
    assert raw.endswith(b"\n\n")
    out = []
    for block in raw[:-2].split(b"\n\n"):
        name, data = block.split(b"\n")
        assert name.startswith(b"event: "), block
        assert data.startswith(b"data: "), block
        out.append((name.removeprefix(b"event: ").decode(), orjson.loads(data[6:])))
    return out


async def post(
    client: Client, behavior: dict[str, Any] | None = None, path: str = MESSAGES, **extra: Any
) -> tuple[int, bytes]:
    headers = {BEHAVIOR_HEADER: orjson.dumps(behavior).decode()} if behavior else {}
    async with client.post(path, json=REQUEST | extra, headers=headers) as resp:
        return resp.status, await resp.read()


async def test_stream_shape_is_vllms_byte_for_byte(client: Client) -> None:
    status, raw = await post(client, {"completion_tokens": 2}, stream=True)
    assert status == 200
    assert raw == (
        b"event: message_start\n"
        b'data: {"type":"message_start","message":{"id":"chatcmpl-fake","content":[],'
        b'"model":"m","stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":7,"output_tokens":0}}}\n\n'
        b"event: content_block_start\n"
        b'data: {"type":"content_block_start","content_block":{"type":"text","text":""},'
        b'"index":0}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"tok0 "},'
        b'"index":0}\n\n'
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"tok1 "},'
        b'"index":0}\n\n'
        b"event: content_block_stop\n"
        b'data: {"type":"content_block_stop","index":0}\n\n'
        b"event: message_delta\n"
        b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        b'"usage":{"input_tokens":7,"output_tokens":2}}\n\n'
        b"event: message_stop\n"
        b'data: {"type":"message_stop"}\n\n'
    )
    assert client.app[FAKE_STATE].completed == 1


async def test_non_stream_body_leaves_out_what_is_none(client: Client) -> None:
    status, raw = await post(client)
    assert status == 200
    assert orjson.loads(raw) == {
        "id": "chatcmpl-fake",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "tok0 tok1 tok2 tok3 tok4 "}],
        "model": "m",
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 7, "output_tokens": 5},
    }


@pytest.mark.parametrize(
    ("engine", "anthropic"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"), ("abort", None)],
)
async def test_engine_finishes_become_stop_reasons(
    client: Client, engine: str, anthropic: str | None
) -> None:
    _, raw = await post(client, {"finish_reason": engine}, stream=True)
    last_name, last = named_events(raw)[-2]
    assert (last_name, last["delta"]) == ("message_delta", {"stop_reason": anthropic})
    _, body = await post(client, {"finish_reason": engine})
    assert orjson.loads(body).get("stop_reason") == anthropic


async def test_usage_never_plays_a_server_without_usage(client: Client) -> None:
    _, raw = await post(client, {"usage": "never"}, stream=True)
    assert all(
        "usage" not in data and "usage" not in data.get("message", {})
        for _, data in named_events(raw)
    )
    _, body = await post(client, {"usage": "never"})
    assert "usage" not in orjson.loads(body)


async def test_error_after_ends_the_stream_with_an_error_event(client: Client) -> None:
    _, raw = await post(client, {"error_after": 1}, stream=True)
    names = [name for name, _ in named_events(raw)]
    assert names == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert named_events(raw)[-1][1] == {
        "type": "error",
        "error": {"type": "internal_error", "message": "fake engine failure"},
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_status_answers_with_anthropics_error_shape(client: Client, stream: bool) -> None:
    status, raw = await post(client, {"status": 429}, stream=stream)
    assert status == 429
    error = {"type": "RateLimitError", "message": "fake error"}
    assert orjson.loads(raw) == {"type": "error", "error": error}
    status, raw = await post(client, stream="maybe")
    assert status == 400
    assert orjson.loads(raw)["error"]["type"] == "BadRequestError"


async def test_framing_modes_carry_the_same_events(client: Client) -> None:
    _, plain = await post(client, stream=True)
    behavior = {"split": 3, "crlf": True, "keepalive": True}
    _, framed = await post(client, behavior, stream=True)
    assert framed.replace(b"\r\n", b"\n").replace(b": ping\n\n", b"") == plain


async def test_count_tokens_answers_the_prompt_length(client: Client) -> None:
    status, raw = await post(client, path="/v1/messages/count_tokens")
    assert status == 200
    assert orjson.loads(raw) == {
        "input_tokens": 7,
        "context_management": {"original_input_tokens": 7},
    }
