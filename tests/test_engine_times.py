"""vLLM's own per-request times (--enable-per-request-metrics): the engine's queue adds to the
proxy's, and its prefill and decode are what vLLM's own series would observe."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.fake_upstream import Behavior
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
ENGINE = {
    "queue_time_ms": 2000.0,
    "time_to_first_token_ms": 300.0,
    "generation_time_ms": 700.0,
    "mean_itl_ms": 175.0,
    "tokens_per_second": 5.7,
}


async def sums(stack: Stack) -> dict[str, float]:
    names = ("queue", "prefill", "decode", "inference")
    return {name: (await stack.value(f"vllm:request_{name}_time_seconds"))["sum"] for name in names}


@pytest.mark.parametrize("stream", [True, False])
async def test_the_engines_times_count_as_vllm_would_count_them(
    make_stack: StackFactory, stream: bool
) -> None:
    stack = await make_stack(Behavior(engine_metrics=ENGINE))
    body: dict[str, Any] = {"messages": [], "stream": stream}
    response = await stack.client.post(CHAT, json=body)
    raw = await response.read()
    if stream:  # the usage chunk the proxy asked for is gone; its metrics are back in place
        events = [e for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
        assert all(b'"choices":[]' not in e for e in events)
        assert b'"metrics":{"queue_time_ms":2000.0' in events[-1]
        assert b'"finish_reason":"stop"' in events[-1]
    got = await sums(stack)
    assert 2.0 <= got["queue"] < 2.5  # the engine's 2 s behind the proxy's own (~0)
    # Even a non-streamed answer: the engine saw its first token, the proxy could not.
    assert got["inference"] == pytest.approx(1.0)
    assert got["prefill"] == pytest.approx(0.3)
    assert got["decode"] == pytest.approx(0.7)


async def test_without_engine_times_the_proxys_own_stand(stack: Stack) -> None:
    response = await stack.client.post(CHAT, json={"messages": [], "stream": True})
    await response.read()
    got = await sums(stack)
    assert got["queue"] < 0.5
    assert got["inference"] < 0.5


@pytest.mark.parametrize(
    "metrics",
    [
        {"queue_time_ms": "2", "time_to_first_token_ms": 1, "generation_time_ms": 1},
        {"queue_time_ms": -1, "time_to_first_token_ms": 1, "generation_time_ms": 1},
        {"queue_time_ms": 1, "time_to_first_token_ms": 1},
        {"queue_time_ms": True, "time_to_first_token_ms": 1, "generation_time_ms": 1},
    ],
)
async def test_odd_engine_times_are_ignored(
    make_stack: StackFactory, metrics: dict[str, Any]
) -> None:
    stack = await make_stack(Behavior(engine_metrics=metrics))
    response = await stack.client.post(CHAT, json={"messages": [], "stream": True})
    await response.read()
    assert (await sums(stack))["queue"] < 0.5
