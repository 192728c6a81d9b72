"""The proxy's own routes, and every other path forwarded untouched."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from metrics_proxy.prometheus import CONTENT_TYPE_TEXT
from tests.support.fake_upstream import Behavior
from tests.support.raw_peers import read_message
from tests.support.stack import Stack, StackFactory


async def test_healthz(stack: Stack) -> None:
    response = await stack.client.get("/internal/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}
    assert not stack.state.requests


async def test_metrics_text_and_json(stack: Stack) -> None:
    text = await stack.client.get("/metrics")
    assert text.headers["Content-Type"] == CONTENT_TYPE_TEXT
    body = await text.text()
    assert "# TYPE vllm:request_success_total counter" in body
    assert 'vllm:num_requests_running{engine="proxy",model_name="m"} 0.0' in body
    snapshot = await stack.snapshot()
    assert snapshot["vllm:time_to_first_token_seconds"]["type"] == "histogram"
    assert not stack.state.requests  # none of this went upstream


async def test_metrics_endpoint_can_be_disabled(make_stack: StackFactory) -> None:
    stack = await make_stack(disable_metrics_endpoint=True)
    response = await stack.client.get("/metrics")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == 404
    assert (await stack.client.get("/internal/metrics")).status == 200
    assert not stack.state.requests


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/metrics", "GET"),
        ("DELETE", "/internal/metrics", "GET"),
        ("POST", "/internal/healthz", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
    ],
)
async def test_wrong_method_on_owned_route_is_405(
    stack: Stack, method: str, path: str, allowed: str
) -> None:
    response = await stack.client.request(method, path)
    assert response.status == 405
    assert response.headers["Allow"] == allowed
    error = (await response.json())["error"]
    assert set(error) == {"message", "type", "code"}
    assert not stack.state.requests


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/models", b""),
        ("GET", "/health", b""),
        ("POST", "/tokenize", b'{"prompt": "abc"}'),
    ],
)
async def test_other_paths_are_forwarded_untouched(
    stack: Stack, method: str, path: str, body: bytes
) -> None:
    response = await stack.client.request(method, path + "?x=1&y=%20", data=body or None)
    assert response.status == 200
    (seen,) = stack.state.requests
    assert (seen.method, seen.path, seen.body) == (method, path + "?x=1&y=%20", body)
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 0


async def test_forwarded_body_is_streamed(stack: Stack) -> None:
    response = await stack.client.get("/slow-body?pieces=3&delay=0.01")
    assert response.status == 200
    pieces = [chunk async for chunk in response.content.iter_any()]
    assert len(pieces) >= 2  # arrived as the upstream sent them, not in one buffered piece


async def test_request_headers_reach_the_upstream(stack: Stack) -> None:
    headers = {
        "Authorization": "Bearer sk-secret",
        "X-Request-Id": "req-42",
        "X-Custom": "a, b",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "dropped",
        "Proxy-Authorization": "Basic dropped",
    }
    await stack.client.post("/v1/chat/completions", data=b'{"messages": []}', headers=headers)
    (seen,) = stack.state.requests
    assert seen.headers["Authorization"] == "Bearer sk-secret"
    assert seen.headers["X-Request-Id"] == "req-42"
    assert seen.headers["X-Custom"] == "a, b"
    assert "X-Hop" not in seen.headers
    assert "Proxy-Authorization" not in seen.headers
    assert seen.headers["Host"] == f"127.0.0.1:{stack.upstream.port}"


async def test_response_headers_come_from_the_upstream(stack: Stack) -> None:
    response = await stack.client.get("/echo-headers", headers={"X-Probe": "1"})
    echoed = orjson.loads(await response.read())
    assert echoed["X-Probe"] == "1"
    async with aiohttp.ClientSession() as session:
        url = stack.upstream.make_url("/echo-headers")
        async with session.get(url, headers={"X-Probe": "1"}) as direct:
            await direct.read()
    expected = {k: v for k, v in direct.headers.items() if k not in ("Date", "Content-Length")}
    # The one header the proxy adds: the request's id, which the upstream did not send back.
    added = ("date", "content-length", "x-request-id")
    got = {k: v for k, v in response.headers.items() if k.lower() not in added}
    assert got == expected  # Server and Content-Type are the upstream's own


async def test_http_series_count_requests_by_handler_and_status(stack: Stack) -> None:
    await stack.client.post("/v1/chat/completions", data=b'{"messages": []}')
    await stack.client.get("/v1/models")
    await stack.client.get("/health")
    await stack.client.get("/some/unknown/path")
    samples = (await stack.snapshot())["http_requests_total"]["samples"]
    counted = {(s["labels"]["handler"], s["labels"]["status"]): s["value"] for s in samples}
    assert counted == {
        ("/v1/chat/completions", "2xx"): 1.0,
        ("/v1/models", "2xx"): 1.0,
        ("none", "4xx"): 1.0,
    }


async def test_metered_responses_are_asked_uncompressed(stack: Stack) -> None:
    headers = {"Accept-Encoding": "gzip, br"}
    await stack.client.post("/v1/chat/completions", data=b'{"messages": []}', headers=headers)
    await stack.client.get("/v1/models", headers=headers)
    metered, forwarded = stack.state.requests
    assert metered.headers["Accept-Encoding"] == "identity"  # the proxy must read it
    assert forwarded.headers["Accept-Encoding"] == "gzip, br"  # untouched elsewhere


async def test_the_upstream_gets_no_header_of_aiohttps_own(stack: Stack) -> None:
    """A request without User-Agent, Accept, Accept-Encoding or Content-Type reaches the
    upstream without them: aiohttp adds none (nor its octet-stream type for a body), and
    the proxy adds only what it means to (a metered answer asked uncompressed)."""
    body = b'{"messages": []}'
    for target in ("/v1/chat/completions", "/tokenize"):
        head = f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
        try:
            writer.write(f"{head}X-Mine: 1\r\n\r\n".encode() + body)
            async with asyncio.timeout(10):
                assert (await read_message(reader)).status == 200
        finally:
            writer.close()
    metered, forwarded = stack.state.requests
    # ... and the request's id, which vLLM takes for its own.
    names = ["accept-encoding", "content-length", "host", "x-mine", "x-request-id"]
    assert sorted(name.lower() for name in metered.headers) == names
    assert sorted(name.lower() for name in forwarded.headers) == names[1:]


async def test_a_client_leaving_a_forwarded_request_counts_as_4xx(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True))
    task = asyncio.ensure_future(stack.client.get("/slow-body?pieces=2&delay=30"))
    await stack.state.wait_for_requests(1)
    task.cancel()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("http_requests_total", 1, handler="none", status="4xx")
