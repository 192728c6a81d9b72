"""OpenAI's Responses API (``POST /v1/responses``) through the proxy: the client gets the
upstream's bytes, and the metrics count it as vLLM's engine would."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

RESPONSES = "/v1/responses"
DELTA = b"event: response.output_text.delta\n"
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]
ServerFactory = Callable[..., Awaitable[TestServer]]


def request_body(**extra: Any) -> bytes:
    # vLLM takes the response id from the request when it names one: the same bytes twice.
    fields = {"model": "m", "input": "a secret prompt", "request_id": "resp_test", **extra}
    return orjson.dumps(fields)


async def direct(stack: Stack, body: bytes, behavior: str) -> bytes:
    async with aiohttp.ClientSession() as session:
        url = stack.upstream.make_url(RESPONSES)
        async with session.post(url, data=body, headers={BEHAVIOR_HEADER: behavior}) as response:
            return await response.read()


async def through(stack: Stack, body: bytes, behavior: str = "{}", status: int = 200) -> bytes:
    response = await stack.client.post(RESPONSES, data=body, headers={BEHAVIOR_HEADER: behavior})
    assert response.status == status
    return await response.read()


async def successes(stack: Stack) -> dict[str, float]:
    samples = (await stack.snapshot())["vllm:request_success_total"]["samples"]
    return {s["labels"]["finished_reason"]: s["value"] for s in samples if s["value"]}


async def count(stack: Stack, histogram: str) -> int:
    return int((await stack.value(histogram))["count"])


@pytest.mark.parametrize("behavior", ["{}", '{"split": 7}', '{"crlf": true, "split": 1}'])
async def test_a_stream_is_counted_exactly_and_reaches_the_client_unchanged(
    stack: Stack, behavior: str
) -> None:
    body = request_body(stream=True, max_output_tokens=50)
    streamed = await through(stack, body, behavior)
    assert streamed == await direct(stack, body, behavior)
    assert b"event: response.completed" in streamed
    assert stack.state.requests[0].body == body  # usage comes unasked: nothing is added
    assert await successes(stack) == {"stop": 1}
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert await count(stack, "vllm:time_to_first_token_seconds") == 1
    assert await count(stack, "vllm:inter_token_latency_seconds") == 4  # between 5 deltas
    assert await count(stack, "vllm:e2e_request_latency_seconds") == 1
    assert (await stack.value("vllm:request_params_max_tokens"))["sum"] == 50
    assert await stack.gauges() == (0, 0)
    http = "http_requests_total"
    assert await stack.value(http, handler=RESPONSES, method="POST", status="2xx") == 1


async def test_an_answer_in_one_body_is_counted_exactly(stack: Stack) -> None:
    body = request_body()
    answer = await through(stack, body)
    assert answer == await direct(stack, body, "{}")
    assert orjson.loads(answer)["usage"]["output_tokens"] == 5
    assert await successes(stack) == {"stop": 1}
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert await count(stack, "vllm:time_to_first_token_seconds") == 0  # nothing streamed
    assert await count(stack, "vllm:e2e_request_latency_seconds") == 1
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize(
    ("finish", "counted"),
    [
        ("length", "length"),  # incomplete, max_output_tokens: vLLM's length
        ("content_filter", "content_filter"),  # another reason: its own word, as in chat
        ("cancelled", "abort"),
    ],
)
async def test_the_status_is_vllms_finished_reason(
    stack: Stack, stream: bool, finish: str, counted: str
) -> None:
    await through(stack, request_body(stream=stream), f'{{"finish_reason": "{finish}"}}')
    assert await successes(stack) == {counted: 1}
    assert await stack.value("vllm:generation_tokens_total") == 5


async def test_a_large_body_is_read_for_its_status_and_usage(make_stack: StackFactory) -> None:
    # Past 64 KiB a body is scanned, not decoded: the members that say how it ended are
    # still found, after an output of hundreds of kilobytes.
    output = [{"type": "message", "content": [{"type": "output_text", "text": "x" * 300_000}]}]
    answer = {
        "id": "resp_1",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": output,
        "status": "incomplete",
        "usage": {"input_tokens": 11, "output_tokens": 4096, "total_tokens": 4107},
    }
    stack = await make_stack(Behavior(raw_body=orjson.dumps(answer)))
    assert orjson.loads(await through(stack, request_body())) == answer
    assert await successes(stack) == {"length": 1}
    assert await stack.value("vllm:prompt_tokens_total") == 11
    assert await stack.value("vllm:generation_tokens_total") == 4096
    assert await stack.value("proxy_estimated_token_counts_total") == 0


async def test_an_answer_without_usage_is_estimated(stack: Stack) -> None:
    await through(stack, request_body(stream=True), '{"usage": "never"}')
    assert await stack.value("vllm:generation_tokens_total") == 5  # the deltas, counted
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    assert await successes(stack) == {"stop": 1}


@pytest.mark.parametrize(
    ("finish", "tokens"),
    [("failed", 5), ("error", 5)],  # response.failed (with usage); an error event (without)
)
async def test_a_response_that_failed_mid_stream_is_an_error(
    stack: Stack, finish: str, tokens: int
) -> None:
    body = request_body(stream=True)
    behavior = orjson.dumps({"finish_reason": finish}).decode()
    assert await through(stack, body, behavior) == await direct(stack, body, behavior)
    assert await successes(stack) == {"error": 1}
    assert await stack.value("proxy_errors_total", kind="upstream_stream_error") == 1
    assert await stack.value("vllm:generation_tokens_total") == tokens
    assert await count(stack, "vllm:e2e_request_latency_seconds") == 0  # not finished
    assert await stack.gauges() == (0, 0)


async def test_an_upstream_refusal_passes_and_is_not_a_success(stack: Stack) -> None:
    body = request_body(stream=True)
    refused = await through(stack, body, '{"status": 400}', status=400)
    assert refused == await direct(stack, body, '{"status": 400}')
    assert await successes(stack) == {}
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert await stack.gauges() == (0, 0)
    http = "http_requests_total"
    assert await stack.value(http, handler=RESPONSES, method="POST", status="4xx") == 1


async def test_a_client_leaving_mid_stream_is_an_abort(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(RESPONSES, data=request_body(stream=True))
    seen = b""
    while seen.count(DELTA) < 2:
        seen += await asyncio.wait_for(response.content.readany(), 5)
    response.close()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await successes(stack) == {"abort": 1}
    assert await stack.value("vllm:generation_tokens_total") == 2  # the deltas it saw
    assert await stack.gauges() == (0, 0)


async def test_an_upstream_cut_mid_stream_ends_the_stream_with_an_error(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(reset_after=2))
    streamed = await through(stack, request_body(stream=True))
    last = orjson.loads(streamed.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].removeprefix(b"data: "))
    assert last["error"]["type"] == "upstream_error"
    assert streamed.count(DELTA) == 2
    assert await successes(stack) == {"error": 1}
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.gauges() == (0, 0)


# Reasoning, a tool call's arguments and any other `*.delta` are generated output; events
# around them (and an empty delta) are not.
EVENTS: tuple[dict[str, Any], ...] = (
    {"type": "response.created", "response": {"id": "r", "status": "in_progress"}},
    {"type": "response.reasoning_text.delta", "delta": "hmm"},
    {"type": "response.output_item.added", "item": {"type": "function_call"}},
    {"type": "response.function_call_arguments.delta", "delta": '{"a":'},
    {"type": "response.function_call_arguments.delta", "delta": ""},
    {"type": "response.custom_tool_call_input.delta", "delta": "1}"},
    {"type": "response.function_call_arguments.done", "arguments": '{"a":1}'},
    {
        "type": "response.completed",
        "response": {"status": "completed", "usage": {"input_tokens": 3, "output_tokens": 9}},
    },
)
STREAMED_ELSEWHERE = b"".join(
    b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
    for event in EVENTS
)


async def test_every_kind_of_delta_is_output_and_a_stream_is_told_by_its_type(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    # transformers serve streams unless told otherwise: this request does not ask to.
    async def streaming(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(STREAMED_ELSEWHERE)
        return response

    upstream_app = web.Application()
    upstream_app.router.add_post(RESPONSES, streaming)
    upstream = await aiohttp_server(upstream_app)
    proxy = await aiohttp_client(
        create_app(Config(upstream_url=str(upstream.make_url("")), model_name="m"))
    )
    response = await proxy.post(RESPONSES, data=request_body())
    assert await response.read() == STREAMED_ELSEWHERE
    metrics = await (await proxy.get("/internal/metrics")).json()
    values = {f["name"]: f["samples"] for f in metrics["families"]}
    assert values["vllm:time_to_first_token_seconds"][0]["count"] == 1
    assert values["vllm:inter_token_latency_seconds"][0]["count"] == 2  # between 3 deltas
    assert values["vllm:generation_tokens_total"][0]["value"] == 9
    assert values["vllm:prompt_tokens_total"][0]["value"] == 3


async def test_the_openai_client_reads_responses_through_the_proxy(stack: Stack) -> None:
    client = openai.AsyncOpenAI(
        base_url=str(stack.client.make_url("/v1")), api_key="sk-secret-key", max_retries=0
    )
    async with client:
        stream = await client.responses.create(model="m", input="a secret prompt", stream=True)
        events = [event async for event in stream]
        whole = await client.responses.create(model="m", input="a secret prompt")
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == whole.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert events[-1].type == "response.completed"
    assert whole.usage is not None
    assert whole.usage.output_tokens == 5
    assert await successes(stack) == {"stop": 2}
    assert await stack.value("vllm:generation_tokens_total") == 10
