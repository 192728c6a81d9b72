"""Background responses (``"background": true``): answered ``queued`` at once, run outside
any slot, and counted once, when the first answer the proxy forwards shows them finished."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from metrics_proxy.background import HeldResponses, retrieved_id
from metrics_proxy.record import RequestRecord
from metrics_proxy.recorder import ProxyMetricsRecorder
from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior, FakeUpstreamState
from tests.support.stack import Stack, StackFactory

RESPONSES = "/v1/responses"
CHAT = "/v1/chat/completions"
RETRIEVE = "/v1/responses/{response_id}"


def request_body(**extra: Any) -> bytes:
    return orjson.dumps({"model": "m", "input": "a secret prompt", **extra})


async def successes(stack: Stack) -> dict[str, float]:
    samples = (await stack.snapshot())["vllm:request_success_total"]["samples"]
    return {s["labels"]["finished_reason"]: s["value"] for s in samples if s["value"]}


async def e2e_count(stack: Stack) -> int:
    return int((await stack.value("vllm:e2e_request_latency_seconds"))["count"])


async def queued(stack: Stack, behavior: str = "{}", **extra: Any) -> str:
    """POST a background response; its id, once the proxy has answered ``queued``."""
    body = request_body(background=True, **extra)
    response = await stack.client.post(RESPONSES, data=body, headers={BEHAVIOR_HEADER: behavior})
    assert response.status == 200
    answer = await response.json()
    assert answer["status"] == "queued"
    return str(answer["id"])


async def finished(state: FakeUpstreamState, response_id: str) -> None:
    await state.wait_until(lambda s: s.responses[response_id].finished)


async def retrieve(stack: Stack, response_id: str, **query: str) -> bytes:
    response = await stack.client.get(f"{RESPONSES}/{response_id}", params=query)
    assert response.status == 200
    return await response.read()


@pytest.mark.parametrize(("finish", "counted"), [("stop", "stop"), ("length", "length")])
async def test_a_background_response_is_counted_once_when_seen_finished(
    make_stack: StackFactory, finish: str, counted: str
) -> None:
    stack = await make_stack(Behavior(finish_reason=finish))
    response_id = await queued(stack)
    # Answered, not finished: nothing is counted yet, and nothing is held.
    assert await successes(stack) == {}
    assert await e2e_count(stack) == 0
    assert await stack.gauges() == (0, 0)
    await finished(stack.state, response_id)
    answer = orjson.loads(await retrieve(stack, response_id))
    assert answer["usage"]["output_tokens"] == 5  # the upstream's answer, unchanged
    assert await successes(stack) == {counted: 1}
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert await e2e_count(stack) == 1
    # Never twice: later answers about it count nothing.
    await retrieve(stack, response_id)
    assert await successes(stack) == {counted: 1}
    assert await stack.value("vllm:generation_tokens_total") == 5
    http = "http_requests_total"
    assert await stack.value(http, handler=RETRIEVE, method="GET", status="2xx") == 2


async def test_a_running_background_response_holds_no_slot_until_cancelled(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(max_concurrency=1)
    response_id = await queued(stack, '{"ttft": 60}')
    running = orjson.loads(await retrieve(stack, response_id))
    assert running["status"] in ("queued", "in_progress")
    assert await successes(stack) == {}
    # Its work runs on upstream, outside --max-concurrency: the one slot is free.
    assert await stack.gauges() == (0, 0)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert (await stack.client.post(CHAT, data=orjson.dumps(chat))).status == 200
    assert await successes(stack) == {"stop": 1}
    cancel = await stack.client.post(f"{RESPONSES}/{response_id}/cancel")
    assert (await cancel.json())["status"] == "cancelled"
    assert await successes(stack) == {"stop": 1, "abort": 1}
    assert await stack.value("vllm:generation_tokens_total") == 5  # the chat's
    await retrieve(stack, response_id)
    assert await successes(stack) == {"stop": 1, "abort": 1}


async def test_a_background_stream_its_client_left_is_counted_from_a_later_stream(
    make_stack: StackFactory,
) -> None:
    # The POST's stream stalls after one delta while the work goes on upstream.
    stack = await make_stack(Behavior(stall_after=1))
    body = request_body(background=True, stream=True)
    response = await stack.client.post(RESPONSES, data=body)
    seen = b""
    while b"event: response.output_text.delta\n" not in seen:
        seen += await asyncio.wait_for(response.content.readany(), 5)
    response.close()
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await successes(stack) == {}  # not an abort: the response runs on
    assert await stack.gauges() == (0, 0)
    response_id = next(iter(stack.state.responses))
    await finished(stack.state, response_id)
    stack.state.behavior = Behavior()
    streamed = await retrieve(stack, response_id, stream="true")
    assert streamed.count(b"event: response.output_text.delta\n") == 5
    assert await successes(stack) == {"stop": 1}
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await e2e_count(stack) == 1
    ttft = await stack.value("vllm:time_to_first_token_seconds")
    assert ttft["count"] == 1  # seen live, by the POST
    # Its client saw one delta of five: how long the rest took is not known.
    assert (await stack.value("vllm:request_decode_time_seconds"))["count"] == 0
    await retrieve(stack, response_id)
    assert await successes(stack) == {"stop": 1}


async def test_a_background_stream_read_to_its_end_is_counted_by_it(stack: Stack) -> None:
    body = request_body(background=True, stream=True)
    streamed = await (await stack.client.post(RESPONSES, data=body)).read()
    assert b"event: response.completed\n" in streamed
    assert await successes(stack) == {"stop": 1}
    response_id = next(iter(stack.state.responses))
    await retrieve(stack, response_id, stream="true")
    await retrieve(stack, response_id)
    assert await successes(stack) == {"stop": 1}
    assert await stack.value("vllm:generation_tokens_total") == 5


async def test_a_stored_response_is_counted_by_its_post_alone(stack: Stack) -> None:
    answer = await (await stack.client.post(RESPONSES, data=request_body())).json()
    assert await successes(stack) == {"stop": 1}
    await retrieve(stack, answer["id"])
    assert await successes(stack) == {"stop": 1}


def test_retrieved_ids_are_read_from_the_paths_vllm_answers_with_a_response() -> None:
    assert retrieved_id("/v1/responses/resp_1") == "resp_1"
    assert retrieved_id("/v1/responses/resp_1/cancel") == "resp_1"
    for path in ("/v1/responses", "/v1/responses/", "/v1/responses/a/b", "/v1/models"):
        assert retrieved_id(path) is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def started(recorder: ProxyMetricsRecorder) -> RequestRecord:
    record = recorder.start_request()
    record.slot_acquired()
    return record


def series(recorder: ProxyMetricsRecorder, name: str) -> float:
    families = {f["name"]: f for f in recorder.snapshot()["families"]}
    return float(sum(sample["value"] for sample in families[name]["samples"]))


def test_held_responses_are_dropped_uncounted_past_their_time_or_their_number() -> None:
    clock = Clock()
    recorder = ProxyMetricsRecorder("m", process_metrics=False, clock=clock)
    held = HeldResponses(clock, hold_for=10.0, limit=2)
    held.hold("a", started(recorder))
    clock.now = 5.0
    held.hold("b", started(recorder))
    assert series(recorder, "vllm:num_requests_running") == 0  # given back when held
    clock.now = 10.0
    assert not held.holds("a")  # held for its 10 s
    assert held.holds("b")
    held.hold("c", started(recorder))
    held.hold("d", started(recorder))  # the limit: the oldest, b, goes
    assert not held.holds("b")
    assert held.settle("b", ("stop", None)) is None
    assert len(held) == 2
    record = held.settle("c", ("stop", None))
    assert record is not None
    assert record.settled
    assert held.settle("c", ("stop", None)) is None
    assert series(recorder, "vllm:request_success_total") == 1
