"""Anthropic's Messages API through the proxy, as vLLM serves it: the client gets the
upstream's bytes, the meters get vLLM's counts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from metrics_proxy.apis.base import NO_INJECTION, ResponseFacts, Usage, UsageMode
from metrics_proxy.apis.messages import MESSAGES
from metrics_proxy.stream_meter import MAX_UNFINISHED_EVENT
from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

PATH = "/v1/messages"


def body(**extra: Any) -> bytes:
    message = {"role": "user", "content": "a secret prompt"}
    return orjson.dumps({"model": "m", "max_tokens": 16, "messages": [message], **extra})


async def direct_bytes(stack: Stack, data: bytes, behavior: str = "{}") -> bytes:
    async with aiohttp.ClientSession() as session:
        url = stack.upstream.make_url(PATH)
        async with session.post(url, data=data, headers={BEHAVIOR_HEADER: behavior}) as response:
            return await response.read()


async def proxied(stack: Stack, data: bytes, behavior: str = "{}", status: int = 200) -> bytes:
    response = await stack.client.post(PATH, data=data, headers={BEHAVIOR_HEADER: behavior})
    assert response.status == status
    return await response.read()


async def http_counts(stack: Stack) -> dict[tuple[str, str], float]:
    samples = (await stack.snapshot())["http_requests_total"]["samples"]
    return {(s["labels"]["handler"], s["labels"]["status"]): s["value"] for s in samples}


@pytest.mark.parametrize(
    "behavior",
    ["{}", '{"split": 7}', '{"split": 1}', '{"crlf": true, "keepalive": true}'],
)
async def test_a_stream_passes_unchanged_and_is_counted_exactly(
    stack: Stack, behavior: str
) -> None:
    data = body(stream=True)
    through = await proxied(stack, data, behavior)
    assert through == await direct_bytes(stack, data, behavior)
    assert stack.state.requests[0].body == data  # vLLM reports usage unasked
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 1
    assert (await stack.value("vllm:inter_token_latency_seconds"))["count"] == 4
    assert (await stack.value("vllm:e2e_request_latency_seconds"))["count"] == 1
    max_tokens = await stack.value("vllm:request_params_max_tokens")
    assert (max_tokens["count"], max_tokens["sum"]) == (1, 16)
    assert await stack.gauges() == (0, 0)
    assert (await http_counts(stack))[(PATH, "2xx")] == 1


async def test_a_message_passes_unchanged_and_is_counted_exactly(stack: Stack) -> None:
    data = body()
    assert await proxied(stack, data) == await direct_bytes(stack, data)
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    # Non-streaming: no first token is visible, so no TTFT.
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 0
    assert (await stack.value("vllm:e2e_request_latency_seconds"))["count"] == 1
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize(
    ("engine", "counted"),
    [("length", "length"), ("tool_calls", "stop"), ("stop", "stop")],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_stop_reasons_count_as_the_engines_finish(
    stack: Stack, engine: str, counted: str, stream: bool
) -> None:
    # The fake says max_tokens, tool_use or end_turn, as vLLM does for these engine finishes.
    await proxied(stack, body(stream=stream), f'{{"finish_reason": "{engine}"}}')
    assert await stack.value("vllm:request_success_total", finished_reason=counted) == 1


async def test_timings_follow_the_content_deltas(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(ttft=0.05, itl=0.01, completion_tokens=4))
    await proxied(stack, body(stream=True))
    ttft = await stack.value("vllm:time_to_first_token_seconds")
    assert ttft["count"] == 1
    assert 0.05 <= ttft["sum"] < 1.0
    itl = await stack.value("vllm:inter_token_latency_seconds")
    assert itl["count"] == 3  # between 4 deltas; message_start and block starts do not count
    assert 0.03 <= itl["sum"] < 1.0


async def test_a_server_without_usage_is_estimated_from_the_deltas(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(usage="never", completion_tokens=4))
    await proxied(stack, body(stream=True))
    assert await stack.value("vllm:generation_tokens_total") == 4
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


async def test_a_client_leaving_mid_stream_is_an_abort(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(PATH, data=body(stream=True))
    seen = b""
    while seen.count(b'"text_delta"') < 2:
        seen += await asyncio.wait_for(response.content.readany(), 5)
    response.close()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    assert await stack.value("vllm:generation_tokens_total") == 2  # the deltas seen
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    assert await stack.gauges() == (0, 0)


async def test_an_error_event_from_the_upstream_is_an_error(stack: Stack) -> None:
    data = body(stream=True)
    through = await proxied(stack, data, '{"error_after": 2}')
    assert through == await direct_bytes(stack, data, '{"error_after": 2}')
    assert await stack.value("proxy_errors_total", kind="upstream_stream_error") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 0
    assert await stack.value("vllm:generation_tokens_total") == 2
    assert await stack.gauges() == (0, 0)


def proxy_error(stream: bytes) -> dict[str, Any]:
    """The error of the event the proxy ended a stream with: named, as Anthropic's clients
    read only named events, and in Anthropic's shape."""
    name, data = stream.removesuffix(b"\n\n").rsplit(b"\n\n", 1)[-1].split(b"\n")
    assert name == b"event: error"
    event = orjson.loads(data.removeprefix(b"data: "))
    assert event["type"] == "error"
    error: dict[str, Any] = event["error"]
    return error


async def test_the_upstream_dying_mid_stream_is_an_error(stack: Stack) -> None:
    through = await proxied(stack, body(stream=True), '{"reset_after": 3}')
    assert through.count(b'"text_delta"') == 3
    assert proxy_error(through) == {
        "message": "Upstream connection failed mid-stream",
        "type": "upstream_error",
        "code": 502,
    }
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("vllm:generation_tokens_total") == 3
    assert await stack.gauges() == (0, 0)


async def test_an_upstream_silent_mid_stream_is_cut_with_an_error_event(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_after=2), read_timeout=0.2)
    through = await proxied(stack, body(stream=True))
    assert proxy_error(through)["message"] == "Upstream timed out mid-stream"
    await stack.state.wait_for_closed(1)
    assert await stack.value("proxy_errors_total", kind="timeout") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.gauges() == (0, 0)


async def test_an_unfinished_event_past_the_bound_ends_with_an_error_event(
    aiohttp_server: Callable[..., Awaitable[TestServer]], make_stack: StackFactory
) -> None:
    start = sse("message_start", {"type": "message_start", "message": {}})

    async def endless_event(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(start + b'event: content_block_delta\ndata: {"text": "')
        for _ in range(2 * MAX_UNFINISHED_EVENT // (1 << 20)):  # and never a newline
            await response.write(b"x" * (1 << 20))
        return response

    upstream_app = web.Application()
    upstream_app.router.add_post(PATH, endless_event)
    upstream = await aiohttp_server(upstream_app)
    stack = await make_stack(upstream_url=str(upstream.make_url("")))
    through = await proxied(stack, body(stream=True))
    assert through.startswith(start)
    assert proxy_error(through)["type"] == "upstream_error"
    assert await stack.value("proxy_errors_total", kind="upstream_event_too_large") == 1
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize("stream", [True, False])
async def test_an_upstream_refusal_passes_and_counts_no_request(stack: Stack, stream: bool) -> None:
    data = body(stream=stream)
    refused = await proxied(stack, data, '{"status": 400}', status=400)
    assert refused == await direct_bytes(stack, data, '{"status": 400}')
    assert orjson.loads(refused)["type"] == "error"  # Anthropic's shape, untouched
    for reason in ("stop", "error", "abort"):
        assert await stack.value("vllm:request_success_total", finished_reason=reason) == 0
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1
    assert await stack.gauges() == (0, 0)
    assert (await http_counts(stack))[(PATH, "4xx")] == 1


async def test_count_tokens_is_forwarded_not_counted(stack: Stack) -> None:
    response = await stack.client.post(f"{PATH}/count_tokens", data=body())
    assert response.status == 200
    assert (await response.json())["input_tokens"] == 7
    assert stack.state.requests[0].body == body()
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 0
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert (await http_counts(stack))[(f"{PATH}/count_tokens", "2xx")] == 1


async def test_a_body_that_is_no_json_object_is_refused_here(stack: Stack) -> None:
    response = await stack.client.post(PATH, data=b"[1, 2]")
    assert response.status == 400
    assert (await response.json())["error"]["type"] == "invalid_request_error"
    assert stack.state.requests == []


async def test_stream_is_read_as_vllm_reads_it(stack: Stack) -> None:
    # pydantic takes "true" for a boolean: vLLM streams, and so the proxy meters a stream.
    through = await proxied(stack, body(stream="true"))
    assert through.startswith(b"event: message_start\n")
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 1


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def block_delta(delta: dict[str, str], index: int) -> bytes:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "delta": delta, "index": index}
    )


# vLLM's events for a reply that thinks, then calls a tool: the thinking block's signature
# is made up when the block closes, and a tool call's name comes in its block's start.
THINK_THEN_CALL = b"".join(
    [
        sse(
            "message_start",
            {
                "type": "message_start",
                "message": {"usage": {"input_tokens": 9, "output_tokens": 0}},
            },
        ),
        block_delta({"type": "thinking_delta", "thinking": "hmm"}, 0),
        block_delta({"type": "thinking_delta", "thinking": ""}, 0),
        block_delta({"type": "signature_delta", "signature": "abc"}, 0),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("ping", {"type": "ping"}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
                "index": 1,
            },
        ),
        block_delta({"type": "input_json_delta", "partial_json": '{"a":'}, 1),
        block_delta({"type": "input_json_delta", "partial_json": "1}"}, 1),
        block_delta({"type": "text_delta", "text": "done"}, 2),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use"},
                "usage": {"output_tokens": 12},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    ]
)


async def test_thinking_tool_input_and_text_are_output_a_signature_is_not(
    aiohttp_server: Callable[..., Awaitable[TestServer]], make_stack: StackFactory
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(THINK_THEN_CALL)
        return response

    upstream_app = web.Application()
    upstream_app.router.add_post(PATH, answer)
    upstream = await aiohttp_server(upstream_app)
    stack = await make_stack(upstream_url=str(upstream.make_url("")))
    assert await proxied(stack, body(stream=True)) == THINK_THEN_CALL
    # hmm, {"a":, 1}, done: four outputs, so three gaps between them.
    assert (await stack.value("vllm:inter_token_latency_seconds"))["count"] == 3
    # The input tokens of message_start go with the output tokens of message_delta.
    assert await stack.value("vllm:prompt_tokens_total") == 9
    assert await stack.value("vllm:generation_tokens_total") == 12
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


def large_message(**top: Any) -> bytes:
    """A message past the size the proxy decodes whole, whose tool input holds a usage and
    a stop reason of its own (the model's words, not vLLM's)."""
    decoy = {"usage": {"input_tokens": 1, "output_tokens": 2}, "stop_reason": "max_tokens"}
    content = [
        {"type": "text", "text": "x" * 100_000},
        {"type": "tool_use", "id": "t", "name": "f", "input": decoy},
    ]
    return orjson.dumps({"id": "msg", "type": "message", "content": content, **top})


async def test_a_large_message_is_counted_from_its_own_usage(make_stack: StackFactory) -> None:
    usage = {"input_tokens": 11, "output_tokens": 20_000}
    raw = large_message(stop_reason="tool_use", usage=usage, kv_transfer_params={"usage": 3})
    stack = await make_stack(Behavior(raw_body=raw))
    assert await proxied(stack, body()) == raw
    assert await stack.value("vllm:prompt_tokens_total") == 11
    assert await stack.value("vllm:generation_tokens_total") == 20_000
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert await stack.value("proxy_estimated_token_counts_total") == 0


async def test_a_large_message_without_usage_is_estimated_never_misread(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(raw_body=large_message()))
    await proxied(stack, body())
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert await stack.value("vllm:generation_tokens_total") == 0
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="length") == 0


@pytest.mark.parametrize("size", [3, 1000, 70_000])
def test_a_large_message_reads_the_same_in_any_chunks(size: int) -> None:
    usage = {"input_tokens": 11, "output_tokens": 20_000}
    raw = large_message(stop_reason="max_tokens", stop_sequence=None, usage=usage)
    reader = MESSAGES.body_reader()
    for start in range(0, len(raw), size):
        reader.feed(raw[start : start + size])
    assert reader.facts() == ResponseFacts(Usage(11, 20_000), "length", 0)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"type": 5}',
        b'{"type": "content_block_delta", "delta": "x"}',
        b'{"type": "content_block_delta", "delta": {"type": "text_delta", "text": 5}}',
        b'{"type": "content_block_delta", "delta": {"type": ["text_delta"]}}',
        b'{"type": "message_start", "message": {"usage": {"input_tokens": -1}}}',
        b'{"type": "message_start", "message": []}',
        b'{"type": "message_delta", "delta": [], "usage": {"output_tokens": "5"}}',
    ],
)
def test_odd_events_say_nothing_and_never_raise(data: bytes) -> None:
    reader = MESSAGES.event_reader(NO_INJECTION)
    facts = reader.facts(data)
    assert facts is None or (facts.outputs, facts.usage, facts.finish_reason) == ((), None, None)
    assert not (facts and (facts.done or facts.error))


@pytest.mark.parametrize(
    "data",
    [
        b'{"type": "error", "error": {"type": "internal_error", "message": "x"}}',
        b'{"error": {"message": "x", "type": "InternalServerError", "code": 500}}',
    ],
)
def test_vllms_error_event_and_openais_error_member_are_upstream_errors(data: bytes) -> None:
    facts = MESSAGES.event_reader(NO_INJECTION).facts(data)
    assert facts is not None
    assert facts.error


def test_output_tokens_without_input_tokens_are_no_usage() -> None:
    # A number for one side only would be a wrong count for the other: no usage at all.
    reader = MESSAGES.event_reader(NO_INJECTION)
    facts = reader.facts(b'{"type": "message_delta", "usage": {"output_tokens": 5}}')
    assert facts is not None
    assert facts.usage is None


@pytest.mark.parametrize(
    ("obj", "stream", "max_tokens"),
    [
        ({"stream": True, "max_tokens": 8}, True, 8),
        ({"stream": "no", "max_tokens": 0}, False, None),
        ({"stream": "maybe", "max_tokens": "8"}, False, None),
        ({"stream": [], "max_tokens": True}, False, None),
        ({}, False, None),
    ],
)
def test_request_facts_never_raise(
    obj: dict[str, Any], stream: bool, max_tokens: int | None
) -> None:
    facts = MESSAGES.read_request(obj)
    assert (facts.stream, facts.n, facts.max_tokens) == (stream, 1, max_tokens)
    assert MESSAGES.prepare(b"{}", obj, facts, UsageMode.CONTINUOUS) == (b"{}", NO_INJECTION)
