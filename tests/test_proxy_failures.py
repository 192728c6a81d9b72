"""Every failure path answers clearly, counts once, and leaves both gauges at zero."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import orjson
import pytest

from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
STREAM = orjson.dumps({"model": "m", "messages": [], "stream": True})
PLAIN = orjson.dumps({"model": "m", "messages": []})


async def assert_settled_and_serving(stack: Stack) -> None:
    """Both gauges back at zero, and the next request goes through normally."""
    assert await stack.gauges() == (0, 0)
    response = await stack.client.post(CHAT, data=STREAM, headers={BEHAVIOR_HEADER: "{}"})
    assert response.status == 200
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    assert await stack.gauges() == (0, 0)


def error_of(body: bytes) -> dict[str, object]:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "code"}
    return dict(error)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"", "empty"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 5000 + b"]" * 5000, "not valid JSON"),
    ],
    ids=["malformed", "array", "empty", "not-utf8", "deep"],
)
async def test_bad_body_is_400_without_contacting_the_upstream(
    stack: Stack, body: bytes, message: str
) -> None:
    response = await stack.client.post(CHAT, data=body)
    assert response.status == 400
    error = error_of(await response.read())
    assert message in str(error["message"])
    assert error["code"] == 400
    assert not stack.state.requests
    assert await stack.value("proxy_errors_total", kind="bad_request") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 0
    await assert_settled_and_serving(stack)


async def test_oversized_body_is_413(make_stack: StackFactory) -> None:
    stack = await make_stack(max_body_size=1000)
    response = await stack.client.post(CHAT, data=b'{"x": "' + b"a" * 2000 + b'"}')
    assert response.status == 413
    assert error_of(await response.read())["code"] == 413
    assert not stack.state.requests
    assert await stack.value("proxy_errors_total", kind="body_too_large") == 1
    await assert_settled_and_serving(stack)


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
async def test_upstream_errors_pass_through_unchanged(stack: Stack, status: int) -> None:
    behavior = orjson.dumps({"status": status}).decode()
    response = await stack.client.post(CHAT, data=STREAM, headers={BEHAVIOR_HEADER: behavior})
    assert response.status == status
    body = await response.read()
    assert error_of(body)["code"] == status
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1
    # A 4xx never ran on the engine (vLLM counts none); a 5xx failed.
    errors = await stack.value("vllm:request_success_total", finished_reason="error")
    assert errors == (1 if status >= 500 else 0)
    await assert_settled_and_serving(stack)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_upstream_is_502(make_stack: StackFactory) -> None:
    stack = await make_stack(upstream_url=f"http://127.0.0.1:{free_port()}")
    for body in (STREAM, PLAIN):
        response = await stack.client.post(CHAT, data=body)
        assert response.status == 502
        assert error_of(await response.read())["code"] == 502
    forwarded = await stack.client.get("/v1/models")
    assert forwarded.status == 502
    assert await stack.value("proxy_errors_total", kind="connect") == 3
    # vLLM never saw them: no vLLM request series counts them, http_* do.
    samples = (await stack.snapshot())["vllm:request_success_total"]["samples"]
    assert sum(sample["value"] for sample in samples) == 0
    assert (await stack.value("vllm:request_queue_time_seconds"))["count"] == 0
    handler = {"handler": "/v1/chat/completions", "status": "5xx"}
    assert await stack.value("http_requests_total", **handler) == 2
    assert await stack.gauges() == (0, 0)


async def test_upstream_silent_before_headers_is_504(make_stack: StackFactory) -> None:
    stack = await make_stack(read_timeout=0.2)
    response = await stack.client.post(
        CHAT, data=STREAM, headers={BEHAVIOR_HEADER: '{"stall_before_headers": true}'}
    )
    assert response.status == 504
    assert error_of(await response.read())["code"] == 504
    await stack.state.wait_for_closed(1)
    assert await stack.value("proxy_errors_total", kind="timeout") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    await assert_settled_and_serving(stack)


async def test_stalled_stream_is_cut_by_the_read_timeout(make_stack: StackFactory) -> None:
    stack = await make_stack(read_timeout=0.2)
    response = await stack.client.post(
        CHAT, data=STREAM, headers={BEHAVIOR_HEADER: '{"stall_after": 2}'}
    )
    assert response.status == 200
    body = await response.read()
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: ")
    assert error_of(last[len(b"data: ") :])["type"] == "upstream_error"
    await stack.state.wait_for_closed(1)
    assert await stack.value("proxy_errors_total", kind="timeout") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("vllm:generation_tokens_total") == 2  # counted so far
    await assert_settled_and_serving(stack)


async def test_request_timeout_bounds_the_whole_exchange(make_stack: StackFactory) -> None:
    stack = await make_stack(request_timeout=0.3, read_timeout=0)
    # Never silent for long (a chunk every 50 ms), but longer than the request timeout.
    behavior = '{"completion_tokens": 100, "itl": 0.05}'
    response = await stack.client.post(CHAT, data=STREAM, headers={BEHAVIOR_HEADER: behavior})
    body = await response.read()
    assert b'"error"' in body.rsplit(b"\n\n", 2)[-2]
    assert await stack.value("proxy_errors_total", kind="timeout") == 1
    await assert_settled_and_serving(stack)


async def test_upstream_dying_mid_stream_ends_the_stream_with_an_error_event(
    stack: Stack,
) -> None:
    response = await stack.client.post(
        CHAT, data=STREAM, headers={BEHAVIOR_HEADER: '{"reset_after": 3}'}
    )
    body = await response.read()
    assert body.count(b'"content":"tok') == 3
    assert body.endswith(b"\n\n")
    assert b'"error"' in body.rsplit(b"\n\n", 2)[-2]
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("vllm:generation_tokens_total") == 3
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    await assert_settled_and_serving(stack)


async def test_upstream_dying_mid_body_breaks_the_client_connection(stack: Stack) -> None:
    # A JSON body cut short must not reach the client looking complete.
    behavior = '{"reset_after": 2, "content_type": "application/json"}'
    response = await stack.client.post(CHAT, data=STREAM, headers={BEHAVIOR_HEADER: behavior})
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    await assert_settled_and_serving(stack)


async def test_client_leaving_mid_stream_closes_the_upstream_and_counts_abort(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(CHAT, data=STREAM)
    seen = b""
    while seen.count(b"tok") < 2:
        seen += await asyncio.wait_for(response.content.readany(), 5)
    response.close()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    assert await stack.value("vllm:generation_tokens_total") == 2
    stack.state.behavior = Behavior()
    await assert_settled_and_serving(stack)


async def test_client_leaving_before_headers_closes_the_upstream(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True))
    task = asyncio.ensure_future(stack.client.post(CHAT, data=STREAM))
    await stack.state.wait_for_requests(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="before_headers")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    stack.state.behavior = Behavior()
    await assert_settled_and_serving(stack)


async def test_an_upstream_refusal_moves_no_request_series(stack: Stack) -> None:
    # vLLM observes queue time at a request's finish; a request its server refused (4xx)
    # never finished in the engine, so it moves neither queue time nor e2e.
    response = await stack.client.post(
        CHAT, data=STREAM, headers={BEHAVIOR_HEADER: '{"status": 400}'}
    )
    assert response.status == 400
    await response.read()
    assert (await stack.value("vllm:request_queue_time_seconds"))["count"] == 0
    assert (await stack.value("vllm:e2e_request_latency_seconds"))["count"] == 0
