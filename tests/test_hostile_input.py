"""Hostile or broken clients get a clear answer and leave the proxy and its metrics sound."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"


async def raw_exchange(stack: Stack, request: bytes, *, close_after_send: bool = False) -> bytes:
    """Send raw bytes to the proxy and return what it answers (bounded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    try:
        writer.write(request)
        await writer.drain()
        if close_after_send:
            return b""
        async with asyncio.timeout(10):
            return await reader.read(65536)
    finally:
        writer.close()


async def assert_sound(stack: Stack) -> None:
    """Nothing counted that did not run, gauges at zero, and a normal request still works."""
    assert await stack.gauges() == (0, 0)
    response = await stack.client.post(CHAT, data=b'{"messages": [], "stream": true}')
    assert response.status == 200
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    assert await stack.gauges() == (0, 0)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.mark.parametrize(
    "header",
    [b"X-Bad: a\rb", b"X-Bad: a\nInjected: yes", b"X-Bad: \x00"],
    ids=["bare-cr", "bare-lf", "nul"],
)
async def test_header_values_with_control_characters_are_refused(
    stack: Stack, header: bytes
) -> None:
    request = (
        b"POST "
        + CHAT.encode()
        + b" HTTP/1.1\r\nHost: x\r\n"
        + header
        + (b"\r\nContent-Length: 2\r\n\r\n{}")
    )
    answer = await raw_exchange(stack, request)
    assert status_of(answer) == 400
    assert not stack.state.requests
    await assert_sound(stack)


async def test_very_long_headers_are_refused(stack: Stack) -> None:
    request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n"
    answer = await raw_exchange(stack, request)
    assert status_of(answer) in (400, 431)
    assert not stack.state.requests
    await assert_sound(stack)


async def test_content_length_shorter_than_the_body(stack: Stack) -> None:
    # The declared length ends the request early; the rest is a malformed next request.
    request = (
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
        b'{"messages": []}'
    )
    answer = await raw_exchange(stack, request)
    assert status_of(answer) == 400  # the truncated JSON, or the garbage after it
    assert not stack.state.requests
    await assert_sound(stack)


async def test_content_length_longer_than_the_body_then_gone(stack: Stack) -> None:
    request = (
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
        b'{"messages": []}'
    )
    await raw_exchange(stack, request, close_after_send=True)
    # The client left mid-body: nothing ran, but the exchange is counted as a 4xx.
    await stack.wait_for(
        "http_requests_total", 1, handler="/v1/chat/completions", method="POST", status="4xx"
    )
    await assert_sound(stack)
    assert len(stack.state.requests) == 1  # only the soundness check's own request


async def test_slow_body_gets_408(make_stack: StackFactory) -> None:
    stack = await make_stack(client_timeout=0.3)
    request = b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
    answer = await raw_exchange(stack, request)  # the rest never comes
    assert status_of(answer) == 408
    assert await stack.value("proxy_errors_total", kind="client_timeout") == 1
    await assert_sound(stack)


async def test_slow_headers_do_not_block_other_clients(stack: Stack) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    await assert_sound(stack)  # served while the slow client dribbles
    writer.close()


async def test_chunked_request_body_is_accepted(stack: Stack) -> None:
    body = b'{"messages": [], "stream": true}'
    request = (
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + f"{len(body):x}".encode() + b"\r\n" + body + b"\r\n0\r\n\r\n"
    )
    answer = await raw_exchange(stack, request)
    assert status_of(answer) == 200
    (seen,) = stack.state.requests
    assert orjson.loads(seen.body)["stream"] is True
    assert seen.headers["Content-Length"] == str(len(seen.body))


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": "true"},
        {"stream": 1},
        {"n": "2", "max_tokens": True},
        {"n": -3, "max_tokens": 1.5},
        {"stream_options": {"include_usage": "no"}, "stream": True},
    ],
    ids=str,
)
async def test_wrongly_typed_fields_are_forwarded_and_metered_safely(
    stack: Stack, fields: dict[str, object]
) -> None:
    body = orjson.dumps({"model": "m", "messages": [], **fields})
    response = await stack.client.post(CHAT, data=body)
    assert response.status == 200
    await response.read()
    (seen,) = stack.state.requests
    sent = orjson.loads(seen.body)
    for key, value in fields.items():
        if key != "stream_options":
            assert sent[key] == value  # the upstream judges them, not the proxy
    finished = (await stack.snapshot())["vllm:request_success_total"]["samples"]
    assert sum(s["value"] for s in finished) == 1
    await assert_sound(stack)


async def test_integers_beyond_64_bits_are_forwarded_byte_for_byte(stack: Stack) -> None:
    body = (
        b'{"messages": [], "stream": true, "max_tokens": 1'
        + b"0" * 30
        + b', "seed": -9'
        + (b"9" * 25 + b"}")
    )
    response = await stack.client.post(CHAT, data=body)
    assert response.status == 200
    await response.read()
    (seen,) = stack.state.requests
    assert seen.body == b'{"stream_options":{"include_usage":true},' + body[1:]
    await assert_sound(stack)


async def test_compressed_body_on_a_metered_route_is_415(stack: Stack) -> None:
    import gzip

    response = await stack.client.post(
        CHAT, data=gzip.compress(b'{"messages": []}'), headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 415
    assert (await response.json())["error"]["code"] == 415
    assert not stack.state.requests
    await assert_sound(stack)


async def test_compressed_body_on_a_forwarded_route_passes_untouched(stack: Stack) -> None:
    import gzip

    plain = b'{"input": "x" }' * 20
    response = await stack.client.post(
        "/tokenize", data=gzip.compress(plain), headers={"Content-Encoding": "gzip"}
    )
    assert response.status == 200
    (seen,) = stack.state.requests
    # The fake (an aiohttp server) inflates what it receives: the gzip bytes arrived intact
    # and still labelled, or it could not have.
    assert seen.body == plain
    assert seen.headers["Content-Encoding"] == "gzip"


async def test_malformed_chunked_body_is_400(stack: Stack) -> None:
    request = (
        b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    )
    answer = await raw_exchange(stack, request)
    assert status_of(answer) == 400
    assert not stack.state.requests
    await assert_sound(stack)


async def test_absolute_form_target_goes_to_our_upstream(stack: Stack) -> None:
    body = b'{"messages": [], "stream": true}'
    request = (
        b"POST http://elsewhere.invalid/v1/chat/completions?x=1 HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    answer = await raw_exchange(stack, request)
    assert status_of(answer) == 200
    (seen,) = stack.state.requests
    assert seen.path == "/v1/chat/completions?x=1"
