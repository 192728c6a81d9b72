"""The fake upstream speaks vLLM's wire format and reports how each response ended."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from tests.support.fake_upstream import (
    BEHAVIOR_HEADER,
    FAKE_STATE,
    Behavior,
    FakeUpstreamState,
    make_fake_upstream,
)

Client = TestClient[web.Request, web.Application]
CHAT = "/v1/chat/completions"
USAGE = {"prompt_tokens": 7, "total_tokens": 12, "completion_tokens": 5}


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> Client:
    return await aiohttp_client(make_fake_upstream())


def state_of(client: Client) -> FakeUpstreamState:
    return client.app[FAKE_STATE]


def events(raw: bytes) -> list[Any]:
    """Decode a plain (\\n-separated, comment-free) SSE body; "[DONE]" stays a string."""
    assert raw.endswith(b"\n\n")
    out: list[Any] = []
    for block in raw[:-2].split(b"\n\n"):
        assert block.startswith(b"data: "), block
        data = block.removeprefix(b"data: ")
        out.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return out


async def post(
    client: Client, body: dict[str, Any], behavior: dict[str, Any] | None = None, path: str = CHAT
) -> bytes:
    headers = {BEHAVIOR_HEADER: orjson.dumps(behavior).decode()} if behavior else {}
    async with client.post(path, json=body, headers=headers) as resp:
        return await resp.read()


def stream_body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, **extra}


@pytest.mark.parametrize("include_usage", [False, True])
async def test_chat_stream_shape(client: Client, include_usage: bool) -> None:
    async with client.post(
        CHAT, json=stream_body(stream_options={"include_usage": include_usage})
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        got = events(await resp.read())
    role, *content = got[: 1 + 5]
    assert role["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]
    assert content[0] == {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"content": "tok0 "}, "logprobs": None, "finish_reason": None}
        ],
    }
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 4 + ["stop"]
    assert [c["choices"][0]["delta"]["content"] for c in content] == [f"tok{i} " for i in range(5)]
    if include_usage:
        assert got[6]["choices"] == []
        assert got[6]["usage"] == USAGE
    assert got[-1] == "[DONE]"
    assert len(got) == 1 + 5 + include_usage + 1
    assert state_of(client).completed == 1
    assert state_of(client).active == 0


async def test_completions_stream_shape(client: Client) -> None:
    got = events(await post(client, {"prompt": "hi", "stream": True}, path="/v1/completions"))
    assert len(got) == 5 + 1  # no role chunk for completions
    assert got[0]["object"] == "text_completion"
    assert got[0]["model"] == "fake-model"
    assert got[4]["choices"] == [
        {"index": 0, "text": "tok4 ", "logprobs": None, "finish_reason": "stop"}
    ]


async def test_stream_is_deterministic(client: Client) -> None:
    body = stream_body(stream_options={"include_usage": True})
    first = await post(client, body)
    assert first == await post(client, body)
    # Key order too is vLLM's, byte for byte.
    assert (
        b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"m","choices":[{"index":0,"delta":{"content":"tok0 "},"logprobs":null,'
        b'"finish_reason":null}]}\n\n'
    ) in first


@pytest.mark.parametrize(
    "behavior",
    [
        {"split": 7},
        {"crlf": True},
        {"keepalive": True},
        {"split": 3, "crlf": True, "keepalive": True},
    ],
)
async def test_framing_modes_carry_the_same_events(
    client: Client, behavior: dict[str, Any]
) -> None:
    plain = await post(client, stream_body())
    headers = {BEHAVIOR_HEADER: orjson.dumps(behavior).decode()}
    async with client.post(CHAT, json=stream_body(), headers=headers) as resp:
        pieces = [data async for data, _ in resp.content.iter_chunks()]
    if "split" in behavior:  # each HTTP chunk is one write of at most `split` bytes
        assert max(len(p) for p in pieces) <= behavior["split"]
    framed = b"".join(pieces)
    assert (framed != plain) == ("crlf" in behavior or "keepalive" in behavior)
    normalised = framed.replace(b"\r\n", b"\n").replace(b": ping\n\n", b"")
    assert normalised == plain


async def test_header_overrides_behavior_for_one_request(client: Client) -> None:
    got = events(
        await post(client, stream_body(), {"completion_tokens": 2, "finish_reason": "length"})
    )
    assert len(got) == 1 + 2 + 1
    assert got[2]["choices"][0]["finish_reason"] == "length"
    assert len(events(await post(client, stream_body()))) == 1 + 5 + 1


async def test_bad_override_is_a_400(client: Client) -> None:
    async with client.post(CHAT, json={}, headers={BEHAVIOR_HEADER: '{"nope": 1}'}) as resp:
        assert resp.status == 400
        assert "nope" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_status_answers_with_openai_error(client: Client, stream: bool) -> None:
    headers = {BEHAVIOR_HEADER: '{"status": 429}'}
    async with client.post(CHAT, json={"stream": stream}, headers=headers) as resp:
        assert resp.status == 429
        body = await resp.json()
    assert body == {"error": {"message": "fake error", "type": "RateLimitError", "code": 429}}


async def test_non_stream_bodies(client: Client) -> None:
    chat = orjson.loads(await post(client, {"model": "m", "n": 2}))
    assert chat["object"] == "chat.completion"
    assert chat["id"] == "chatcmpl-fake"
    assert chat["choices"][1] == {
        "index": 1,
        "message": {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4 "},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chat["usage"] == {"prompt_tokens": 7, "total_tokens": 17, "completion_tokens": 10}
    text = orjson.loads(await post(client, {"prompt": "x"}, path="/v1/completions"))
    assert text["object"] == "text_completion"
    assert text["usage"] == USAGE
    assert text["choices"][0]["text"] == "tok0 tok1 tok2 tok3 tok4 "
    assert await post(client, {}, {"raw_body": "not json"}) == b"not json"


async def test_usage_modes(client: Client) -> None:
    asked = stream_body(stream_options={"include_usage": True, "continuous_usage_stats": True})
    assert all("usage" not in e for e in events(await post(client, asked, {"usage": "never"}))[:-1])
    assert "usage" not in orjson.loads(await post(client, {}, {"usage": "never"}))
    assert events(await post(client, stream_body(), {"usage": "always"}))[-2]["usage"] == USAGE
    continuous = events(await post(client, asked))[:-1]
    assert [e["usage"]["completion_tokens"] for e in continuous] == [0, 1, 2, 3, 4, 5, 5]


async def test_n_choices_interleave_per_token(client: Client) -> None:
    body = stream_body(n=2, stream_options={"include_usage": True})
    got = events(await post(client, body, {"completion_tokens": 2}))
    choices = [(e["choices"][0]["index"], e["choices"][0]["delta"]) for e in got[2:6]]
    tokens = [(j, {"content": f"tok{i} "}) for i in range(2) for j in range(2)]
    assert choices == tokens
    assert got[6]["usage"] == {"prompt_tokens": 7, "total_tokens": 11, "completion_tokens": 4}


async def test_reset_fails_the_client_read(client: Client) -> None:
    headers = {BEHAVIOR_HEADER: '{"reset_after": 2}'}
    async with client.post(CHAT, json=stream_body(), headers=headers) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    state = state_of(client)
    await state.wait_until(lambda s: s.resets == 1 and s.active == 0)
    assert (state.closed_early, state.completed) == (0, 0)


async def test_stall_ends_when_the_client_closes(client: Client) -> None:
    headers = {BEHAVIOR_HEADER: '{"stall_after": 2}'}
    async with client.post(CHAT, json=stream_body(), headers=headers) as resp:
        seen = b""
        while seen.count(b"tok") < 2:
            seen += await asyncio.wait_for(resp.content.readany(), 5)
        resp.close()
    state = state_of(client)
    await state.wait_for_closed(1)
    await state.wait_until(lambda s: s.active == 0)
    assert (state.completed, state.resets) == (0, 0)


async def test_stall_is_noticed_without_handler_cancellation() -> None:
    # The fallback path: a runner that never cancels handlers (aiohttp's default).
    app = make_fake_upstream(Behavior(stall_before_headers=True))
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(session.post(f"http://127.0.0.1:{port}{CHAT}", json={}))
            await app[FAKE_STATE].wait_until(lambda s: s.active == 1)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
        await app[FAKE_STATE].wait_for_closed(1)
    finally:
        await runner.cleanup()


async def test_requests_are_recorded(client: Client) -> None:
    async with client.post("/tokenize?x=1", data=b"abcd", headers={"X-Test": "a"}) as resp:
        assert await resp.json() == {"count": 4}
    async with client.get("/echo-headers", headers={"X-Test": "b"}) as resp:
        assert (await resp.json())["X-Test"] == "b"
    first, second = await state_of(client).wait_for_requests(2)
    assert (first.method, first.path, first.body) == ("POST", "/tokenize?x=1", b"abcd")
    assert first.headers["x-test"] == "a"
    assert second.method == "GET"


async def test_other_routes(client: Client) -> None:
    async with client.get("/v1/models") as resp:
        assert (await resp.json())["data"] == [{"id": "fake-model", "object": "model"}]
    async with client.get("/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""
    async with client.post("/v1/embeddings", json={"input": "x"}) as resp:
        assert (await resp.json())["object"] == "list"
    async with client.get("/slow-body?pieces=3&delay=0") as resp:
        assert await resp.read() == b"piece0\npiece1\npiece2\n"
    assert state_of(client).completed == 2  # the embeddings answer and the slow body


def test_override_rejects_unknown_fields_and_bad_usage() -> None:
    assert Behavior().override('{"raw_body": "x"}').raw_body == b"x"
    with pytest.raises(ValueError, match="unknown"):
        Behavior().override('{"ttfb": 1}')
    with pytest.raises(ValueError, match="usage"):
        Behavior().override('{"usage": "sometimes"}')
