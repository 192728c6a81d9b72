"""The simulator's Profile: each request's length, pacing, finish and failure, drawn around
the medians asked for; and its pacing as a client sees it, through HTTP."""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient

from metrics_proxy.simulator.app import make_simulator
from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.profile import Profile, prompt_tokens
from metrics_proxy.simulator.state import Simulation

CHAT: dict[str, Any] = {"model": "my-model", "messages": [{"role": "user", "content": "x" * 40}]}


def draw(profile: Profile, body: dict[str, Any], seed: int = 0) -> Behavior:
    return profile.draw(body, Behavior(), random.Random(seed))


def test_the_prompt_is_about_four_characters_a_token_and_one_a_token_id() -> None:
    assert prompt_tokens({"prompt": "abcd" * 25}) == 25
    assert prompt_tokens({"prompt": [1, 2, 3]}) == 3
    assert prompt_tokens({"messages": [{"role": "user", "content": "abcd" * 9}]}) == 10
    assert prompt_tokens({}) == 1
    deep: object = "abcd"
    for _ in range(5000):  # nested deeper than any recursion limit
        deep = [deep]
    assert prompt_tokens({"input": deep}) == 1


def test_lengths_spread_around_the_median_and_max_tokens_cuts_them() -> None:
    profile = Profile(output_tokens=80, spread=0.6)
    rng = random.Random(5)
    lengths = [profile.draw(CHAT, Behavior(), rng).completion_tokens for _ in range(2001)]
    assert 72 <= statistics.median(lengths) <= 88
    assert min(lengths) < 40 < 160 < max(lengths)
    fixed = draw(Profile(output_tokens=30, spread=0), CHAT)
    assert (fixed.completion_tokens, fixed.finish_reason) == (30, "stop")
    cut = draw(Profile(output_tokens=30, spread=0), {**CHAT, "max_tokens": 12})
    assert (cut.completion_tokens, cut.finish_reason) == (12, "length")
    assert cut.prompt_tokens == prompt_tokens(CHAT)


def test_pacing_is_drawn_around_the_medians() -> None:
    profile = Profile(ttft=0.5, itl=0.02)
    rng = random.Random(9)
    draws = [profile.draw(CHAT, Behavior(), rng) for _ in range(2001)]
    assert 0.45 <= statistics.median(b.ttft for b in draws) <= 0.55
    assert 0.018 <= statistics.median(b.itl for b in draws) <= 0.022
    one = draws[0]
    assert one.answer_delay == pytest.approx(one.ttft + one.itl * (one.completion_tokens - 1))


def test_the_error_rate_is_the_share_of_500s() -> None:
    profile = Profile(error_rate=0.25)
    rng = random.Random(3)
    statuses = [profile.draw(CHAT, Behavior(), rng).status for _ in range(4000)]
    assert set(statuses) == {200, 500}
    assert 0.22 <= statuses.count(500) / len(statuses) <= 0.28
    assert draw(Profile(error_rate=1), CHAT).error_message == "simulated engine error"


def test_a_seed_in_the_request_decides_its_draw() -> None:
    profile = Profile(error_rate=0.5)
    seeded = {**CHAT, "seed": 42}
    assert len({draw(profile, seeded, seed) for seed in range(20)}) == 1
    assert len({draw(profile, CHAT, seed) for seed in range(20)}) > 1


def test_what_vllm_refuses_is_refused_with_its_words() -> None:
    other = draw(Profile(), {**CHAT, "model": "gpt-4"})
    assert (other.status, other.error_message) == (404, "The model `gpt-4` does not exist.")
    long = draw(Profile(max_model_len=100), {**CHAT, "max_tokens": 95})
    assert long.status == 400
    assert long.error_message.startswith(
        "This model's maximum context length is 100 tokens. However, you requested 106 tokens "
        "(11 in the messages, 95 in the completion)."
    )
    assert draw(Profile(), {**CHAT, "model": None}).status == 200  # vLLM's default model


async def test_a_stream_keeps_the_drawn_pace(aiohttp_client: AiohttpClient) -> None:
    profile = Profile(ttft=0.15, itl=0.01, output_tokens=6, spread=0)
    client = await aiohttp_client(make_simulator(Simulation(profile=profile)))
    body = {**CHAT, "stream": True, "seed": 11}
    expected = draw(profile, body)
    loop = asyncio.get_running_loop()
    async with client.post("/v1/chat/completions", json=body) as response:
        arrivals = []
        async for line in response.content:
            if line.startswith(b"data: "):
                arrivals.append(loop.time())
    role, first, *_, last, _done = arrivals
    assert len(arrivals) == 1 + 6 + 1
    slack = 0.005  # the loop's clock resolution: a timer may fire that much early
    assert first - role >= expected.ttft - slack
    assert last - first >= 5 * expected.itl - slack


async def test_a_whole_answer_comes_after_the_engine_time(aiohttp_client: AiohttpClient) -> None:
    profile = Profile(ttft=0.1, itl=0.01, output_tokens=5, spread=0)
    client = await aiohttp_client(make_simulator(Simulation(profile=profile)))
    body = {**CHAT, "seed": 12}
    loop = asyncio.get_running_loop()
    sent = loop.time()
    async with client.post("/v1/chat/completions", json=body) as response:
        answer = await response.json()
    assert loop.time() - sent >= draw(profile, body).answer_delay - 0.005
    assert answer["usage"]["completion_tokens"] == 5
