"""Chat and completions against ``transformers serve``: what the proxy counts equals what the
server reported and the client measured, and the client gets what the server sent.

transformers serve puts ``usage`` on its finish chunk whether asked or not and sends no
usage-only chunk (vLLM with ``--enable-force-include-usage`` does the same); it ends a stream
without ``[DONE]`` and ignores ``stream_options``, so what the proxy adds to a request changes
nothing upstream. The tiny model decodes greedily: one request sent straight to the server
and then through the proxy gets the same answer both times, but for ids and timestamps.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson
import pytest

from tests.e2e.conftest import ProxyFactory
from tests.e2e.exchange import Answer, Proxy, comparable, exchange
from tests.e2e.real_server import RealServer

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
PATHS = (CHAT, COMPLETIONS)
PROMPT = "kaka lolo mimi"
MAX_TOKENS = 8
# A reply this long takes seconds on CPU: a client that leaves after its first words leaves
# long before its end.
LONG_REPLY = 4000
USAGE = {"include_usage": True}
# How a client asks: not streamed, streamed, streamed with usage.
SHAPES: dict[str, dict[str, Any]] = {
    "json": {},
    "stream": {"stream": True},
    "stream-usage": {"stream": True, "stream_options": USAGE},
}
MODES = ("include", "continuous", "none")  # --stream-usage


def body(path: str, **extra: Any) -> dict[str, Any]:
    if path == CHAT:
        messages = [{"role": "user", "content": PROMPT}]
        return {"messages": messages, "max_tokens": MAX_TOKENS, **extra}
    return {"prompt": PROMPT, "max_tokens": MAX_TOKENS, **extra}


async def direct_and_proxied(
    http: aiohttp.ClientSession, server: RealServer, proxy: Proxy, path: str, request: Any
) -> tuple[Answer, Answer]:
    """The same request straight to the server, then through the proxy."""
    direct = await exchange(http, server.url + path, request)
    through = await exchange(http, proxy.url(path), request)
    assert direct.status == 200, (direct.body, server.log_tail())
    return direct, through


async def assert_counted(proxy: Proxy, finished: list[tuple[Answer, Answer]]) -> None:
    """The proxy counted each (direct, proxied) pair as the server reported it (tokens,
    finish reasons), and its latencies fit inside what the client measured: the proxy sees
    a request arrive after the client sent it, and its first output before the client does."""
    settled_at = await proxy.settled()
    reasons: dict[str, float] = {}
    for direct, _ in finished:
        reasons[direct.finish_reason] = reasons.get(direct.finish_reason, 0) + 1
    assert await proxy.by_label("vllm:request_success_total", "finished_reason") == reasons
    prompt = sum(direct.usage[0] for direct, _ in finished)
    assert await proxy.value("vllm:prompt_tokens_total") == prompt
    assert (await proxy.value("vllm:request_prompt_tokens"))["sum"] == prompt
    generated = sum(d.usage[1] for d, _ in finished)
    assert await proxy.value("vllm:generation_tokens_total") == generated
    assert (await proxy.value("vllm:request_generation_tokens"))["sum"] == generated
    assert await proxy.value("proxy_estimated_token_counts_total") == 0
    e2e = await proxy.value("vllm:e2e_request_latency_seconds")
    assert e2e["count"] == len(finished)
    assert 0 < e2e["sum"] <= sum(settled_at - through.started for _, through in finished)
    streams = [through for _, through in finished if through.streamed]
    ttft = await proxy.value("vllm:time_to_first_token_seconds")
    assert ttft["count"] == len(streams)
    assert (ttft["sum"] > 0) == bool(streams)
    assert ttft["sum"] <= sum(through.ttft for through in streams)
    assert ttft["sum"] <= e2e["sum"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("path", PATHS)
async def test_counts_equal_what_the_server_reported(
    http: aiohttp.ClientSession,
    real_server: RealServer,
    make_proxy: ProxyFactory,
    path: str,
    shape: str,
    mode: str,
) -> None:
    proxy = await make_proxy(stream_usage=mode)
    direct, through = await direct_and_proxied(
        http, real_server, proxy, path, body(path, **SHAPES[shape])
    )
    assert through.status == 200
    assert (direct.streamed, direct.finish_reason) == (shape != "json", "length")
    assert direct.usage[1] == MAX_TOKENS
    await assert_counted(proxy, [(direct, through)])


def _passthrough_cases() -> list[Any]:
    cases = []
    for mode in MODES:
        for path in PATHS:
            for shape in SHAPES:
                cases.append(pytest.param(path, shape, mode))
    return cases


@pytest.mark.parametrize(("path", "shape", "mode"), _passthrough_cases())
async def test_the_client_gets_what_the_server_sent(
    http: aiohttp.ClientSession,
    real_server: RealServer,
    make_proxy: ProxyFactory,
    path: str,
    shape: str,
    mode: str,
) -> None:
    proxy = await make_proxy(stream_usage=mode)
    direct, through = await direct_and_proxied(
        http, real_server, proxy, path, body(path, **SHAPES[shape])
    )
    assert (through.status, through.content_type) == (direct.status, direct.content_type)
    # The usage first: where the proxy goes wrong, this says so in one line.
    assert through.usage_member == direct.usage_member
    assert comparable(through.body) == comparable(direct.body)


@pytest.mark.parametrize("mode", ["include", "continuous"])
@pytest.mark.parametrize("path", PATHS)
async def test_a_client_that_leaves_mid_stream_is_an_abort(
    http: aiohttp.ClientSession,
    make_proxy: ProxyFactory,
    path: str,
    mode: str,
) -> None:
    proxy = await make_proxy(stream_usage=mode)
    request = body(path, stream=True, max_tokens=LONG_REPLY)
    left = await exchange(http, proxy.url(path), request, leave_after=2)
    assert left.status == 200
    assert left.outputs >= 2
    await proxy.settled()
    assert await proxy.by_label("vllm:request_success_total", "finished_reason") == {"abort": 1}
    assert await proxy.value("proxy_client_disconnects_total", stage="streaming") == 1
    # No usage came before the client left: the chunks the proxy passed on are the estimate.
    generated = await proxy.value("vllm:generation_tokens_total")
    assert left.outputs <= generated < LONG_REPLY
    assert await proxy.value("proxy_estimated_token_counts_total") == 1
    ttft = await proxy.value("vllm:time_to_first_token_seconds")
    assert ttft["count"] == 1
    assert 0 < ttft["sum"] <= left.ttft
    # vLLM observes no per-request histogram for a request its engine did not finish.
    assert (await proxy.value("vllm:e2e_request_latency_seconds"))["count"] == 0
    # The server is free again, and the next request through the proxy is counted whole.
    after = await exchange(http, proxy.url(path), body(path))
    assert after.status == 200
    settled_at = await proxy.settled()
    assert await proxy.value("vllm:generation_tokens_total") == generated + after.usage[1]
    e2e = await proxy.value("vllm:e2e_request_latency_seconds")
    assert e2e["count"] == 1
    assert 0 < e2e["sum"] <= settled_at - after.started


def _eos_for_third_word(server: RealServer, answer: Answer) -> int:
    text = answer.decoded["choices"][0]["text"]
    return server.token_id(text.split()[2])


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_finish_is_counted_as_stop(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory, stream: bool
) -> None:
    # The model names no end-of-sequence token; this request makes its third word one.
    plain = await exchange(http, real_server.url + COMPLETIONS, body(COMPLETIONS))
    eos = _eos_for_third_word(real_server, plain)
    config = orjson.dumps({"do_sample": False, "eos_token_id": eos}).decode()
    request = body(COMPLETIONS, stream=stream, generation_config=config)
    proxy = await make_proxy()
    direct, through = await direct_and_proxied(http, real_server, proxy, COMPLETIONS, request)
    assert direct.finish_reason == "stop"
    assert direct.usage[1] < MAX_TOKENS
    await assert_counted(proxy, [(direct, through)])


async def test_concurrent_requests_add_up(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory
) -> None:
    proxy = await make_proxy()
    requests = [(path, body(path, **SHAPES[shape])) for path in PATHS for shape in SHAPES]
    direct = [await exchange(http, real_server.url + path, r) for path, r in requests]
    through = await asyncio.gather(*(exchange(http, proxy.url(p), r) for p, r in requests))
    assert [a.status for a in through] == [200] * len(requests)
    await assert_counted(proxy, list(zip(direct, through, strict=True)))


async def test_an_error_event_mid_stream_counts_as_error(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory
) -> None:
    # transformers 5.17's stop-string matcher fails on this tokenizer ("substring not found")
    # as generation starts, once the stream is under way: it says so in an event.
    request = body(CHAT, stream=True, stop=["lolo"])
    proxy = await make_proxy()
    direct, through = await direct_and_proxied(http, real_server, proxy, CHAT, request)
    assert direct.events
    assert "error" in direct.events[-1], direct.body
    assert comparable(through.body) == comparable(direct.body)
    await proxy.settled()
    assert await proxy.by_label("vllm:request_success_total", "finished_reason") == {"error": 1}
    assert await proxy.value("proxy_errors_total", kind="upstream_stream_error") == 1
    assert await proxy.value("vllm:generation_tokens_total") == 0


async def test_a_server_failure_passes_through_and_counts_as_error(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory
) -> None:
    # The same failure in a request that is not streamed: the server answers 500.
    request = body(COMPLETIONS, stop=["lolo"])
    proxy = await make_proxy()
    direct = await exchange(http, real_server.url + COMPLETIONS, request)
    through = await exchange(http, proxy.url(COMPLETIONS), request)
    assert direct.status == through.status == 500
    assert through.body == direct.body
    await proxy.settled()
    assert await proxy.by_label("vllm:request_success_total", "finished_reason") == {"error": 1}
    assert await proxy.value("proxy_errors_total", kind="upstream_status") == 1


@pytest.mark.parametrize("path", PATHS)
async def test_a_request_the_server_refuses_passes_through_uncounted(
    http: aiohttp.ClientSession, real_server: RealServer, make_proxy: ProxyFactory, path: str
) -> None:
    # The server is pinned to its one model: another name is a 400, the engine never runs.
    request = body(path, stream=True, model="another-model")
    proxy = await make_proxy()
    direct = await exchange(http, real_server.url + path, request)
    through = await exchange(http, proxy.url(path), request)
    assert direct.status == through.status == 400
    assert through.body == direct.body
    await proxy.settled()
    assert await proxy.by_label("vllm:request_success_total", "finished_reason") == {}
    assert await proxy.value("vllm:prompt_tokens_total") == 0
    assert await proxy.value("proxy_errors_total", kind="upstream_status") == 1
