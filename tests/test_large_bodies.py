"""Large answers: a huge body is metered without being kept or stalling the proxy, and a huge
unfinished event is held in linear time, up to a bound past which the stream ends."""

from __future__ import annotations

import asyncio
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from metrics_proxy.apis.base import NO_INJECTION
from metrics_proxy.apis.chat import CHAT as CHAT_API
from metrics_proxy.config import Config
from metrics_proxy.server import create_app
from metrics_proxy.stream_meter import MAX_UNFINISHED_EVENT, StreamMeter

CHAT = "/v1/chat/completions"
MIB = 1024 * 1024
ServerFactory = Callable[..., Awaitable[TestServer]]
ClientFactory = Callable[..., Awaitable[TestClient[web.Request, web.Application]]]

# A vLLM chat answer with prompt_logprobs: usage comes first, then the logprobs, ~1 GiB of
# them for a long prompt; here 192 MiB, streamed in 1 MiB pieces.
ANSWER_HEAD = (
    b'{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"\\"usage\\": {\\"prompt_tokens\\": 1}"},'
    b'"finish_reason":"length"}],"usage":{"prompt_tokens":123456,"total_tokens":123466,'
    b'"completion_tokens":10},"prompt_logprobs":[null,'
)
LOGPROB = b'{"12345":{"logprob":-0.123456789,"rank":1,"decoded_token":"\\u0120the"}},'
LOGPROBS_MIB = LOGPROB * (MIB // len(LOGPROB))
ANSWER_MIBS = 192
ANSWER_TAIL = b'{"1":{"logprob":-1.0,"rank":1,"decoded_token":"."}}]}'
STALL_BOUND = 0.5  # seconds; decoding the whole answer at its end blocked for over 2
PROBE_INTERVAL = 0.02


async def serve(
    aiohttp_server: ServerFactory,
    aiohttp_client: ClientFactory,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> TestClient[web.Request, web.Application]:
    """The proxy, in front of an upstream that answers completions with handler."""
    upstream_app = web.Application()
    upstream_app.router.add_post(CHAT, handler)
    upstream = await aiohttp_server(upstream_app)
    return await aiohttp_client(
        create_app(Config(upstream_url=str(upstream.make_url("")), model_name="m"))
    )


async def metric(
    proxy: TestClient[web.Request, web.Application], name: str, **labels: str
) -> float:
    families = (await (await proxy.get("/internal/metrics")).json())["families"]
    samples = next(f for f in families if f["name"] == name)["samples"]
    value: float = next(
        s["value"] for s in samples if all(s["labels"].get(k) == v for k, v in labels.items())
    )
    return value


async def worst_probe_delay(
    proxy: TestClient[web.Request, web.Application], stop: asyncio.Event
) -> float:
    """The longest a /internal/healthz probe waited, from when it was due to its answer."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        due = loop.time() + PROBE_INTERVAL
        await asyncio.sleep(PROBE_INTERVAL)  # pacing the probes: there is no event to await
        async with proxy.get("/internal/healthz") as response:
            assert response.status == 200
        worst = max(worst, loop.time() - due)
    return worst


@pytest.mark.slow
async def test_a_huge_answer_is_metered_exactly_without_being_kept_or_stalling_the_proxy(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(ANSWER_HEAD)
        for _ in range(ANSWER_MIBS):
            await response.write(LOGPROBS_MIB)
        await response.write(ANSWER_TAIL)
        return response

    proxy = await serve(aiohttp_server, aiohttp_client, answer)
    expected_size = len(ANSWER_HEAD) + ANSWER_MIBS * len(LOGPROBS_MIB) + len(ANSWER_TAIL)
    expected_crc = zlib.crc32(ANSWER_HEAD)
    for _ in range(ANSWER_MIBS):
        expected_crc = zlib.crc32(LOGPROBS_MIB, expected_crc)
    expected_crc = zlib.crc32(ANSWER_TAIL, expected_crc)
    stop = asyncio.Event()
    size = crc = 0
    tracemalloc.start()
    try:
        async with asyncio.timeout(60):
            probes = asyncio.create_task(worst_probe_delay(proxy, stop))
            async with proxy.post(CHAT, data=b'{"messages": []}') as response:
                assert response.status == 200
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    crc = zlib.crc32(chunk, crc)
            stop.set()
            worst_delay = await probes
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (size, crc) == (expected_size, expected_crc)
    assert await metric(proxy, "vllm:prompt_tokens_total") == 123456
    assert await metric(proxy, "vllm:generation_tokens_total") == 10
    assert await metric(proxy, "proxy_estimated_token_counts_total") == 0
    assert await metric(proxy, "vllm:request_success_total", finished_reason="length") == 1
    assert worst_delay < STALL_BOUND
    assert peak < 32 * MIB  # the whole answer was held (twice, joined) before


TOKEN_EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'


async def test_an_unfinished_event_past_the_bound_ends_the_stream_with_an_error_event(
    aiohttp_server: ServerFactory, aiohttp_client: ClientFactory
) -> None:
    cut = asyncio.Event()

    async def endless_event(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(TOKEN_EVENT + b'data: {"choices":[{"delta":{"content":"')
        try:
            for _ in range(2 * MAX_UNFINISHED_EVENT // MIB):  # and never a newline
                await response.write(b"x" * MIB)
        except (ConnectionResetError, asyncio.CancelledError):
            cut.set()
            raise
        return response

    proxy = await serve(aiohttp_server, aiohttp_client, endless_event)
    async with asyncio.timeout(30):
        async with proxy.post(CHAT, data=b'{"messages": [], "stream": true}') as response:
            assert response.status == 200
            body = await response.read()
        await cut.wait()  # the proxy closed the upstream's connection
    assert len(body) < MIB  # none of the unfinished event
    assert body.startswith(TOKEN_EVENT)
    error = orjson.loads(body[len(TOKEN_EVENT) :].removeprefix(b"data: "))["error"]
    assert (error["type"], error["code"]) == ("upstream_error", 502)
    assert body.endswith(b"}\n\n")
    assert await metric(proxy, "proxy_errors_total", kind="upstream_event_too_large") == 1
    assert await metric(proxy, "vllm:request_success_total", finished_reason="error") == 1
    assert await metric(proxy, "vllm:num_requests_running") == 0
    assert await metric(proxy, "vllm:num_requests_waiting") == 0


def test_a_long_unfinished_event_is_held_in_linear_time() -> None:
    meter = StreamMeter(CHAT_API, NO_INJECTION)
    size = 4 * 1024
    event = b'data: {"choices":[{"index":0,"delta":{"content":"' + b"x" * 15 * MIB + b'"}}]}\n\n'
    chunks = [event[i : i + size] for i in range(0, len(event), size)]
    started = time.process_time()
    held = [meter.feed(chunk) for chunk in chunks[:-1]]
    elapsed = time.process_time() - started
    assert held == [(b"", ())] * len(held)
    last, outputs = meter.feed(chunks[-1])
    assert last + meter.close()[0] == event
    assert outputs == (0,)
    # Copying all that was held on every 4 KiB chunk took seconds for these 15 MiB.
    assert elapsed < 0.25


def test_an_event_past_the_bound_is_dropped_and_ends_the_metering() -> None:
    meter = StreamMeter(CHAT_API, NO_INJECTION)
    assert meter.feed(TOKEN_EVENT + b"data: ") == (TOKEN_EVENT, (0,))
    piece = b"x" * MIB
    for _ in range(MAX_UNFINISHED_EVENT // MIB - 1):
        assert meter.feed(piece) == (b"", ())
    assert not meter.event_too_large
    assert meter.feed(piece) == (b"", ())
    assert meter.event_too_large
    assert meter.feed(b"\n\n" + TOKEN_EVENT) == (b"", ())  # nothing more is metered
    assert meter.close() == (b"", ())
