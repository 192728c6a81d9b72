"""--model-name auto through HTTP: one proxy in front of a router serving several models, each
request counted under the model it asks for, among those the upstream lists in /v1/models
(read on a timer, never per request); any other name counts as model_name="other"."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from metrics_proxy.apis import API_BY_ROUTE, ApiChoice
from metrics_proxy.apis.base import streams_its_body
from metrics_proxy.recorder import MAX_MODEL_NAME, MAX_MODELS
from tests.support.fake_upstream import Behavior
from tests.support.stack import Stack, StackFactory
from tests.test_audio_api import FORM, TRANSCRIPTIONS, audio_form
from tests.test_pooling_routes import BODIES

CHAT = "/v1/chat/completions"
SUCCESS = "vllm:request_success_total"
# A router's list: two models, and a LoRA adapter vLLM lists with its parent.
ROUTER_MODELS: list[dict[str, Any]] = [
    {"id": "llama", "object": "model", "max_model_len": 8192},
    {"id": "qwen", "object": "model", "max_model_len": 32768},
    {"id": "llama-sql", "object": "model", "parent": "llama"},
]
FAST_REFRESH = 0.02  # seconds: the tests await each refresh by its effect, bounded


async def auto_stack(make_stack: StackFactory, models: Any = None, **settings: Any) -> Stack:
    """A proxy with --model-name auto in front of a fake listing ``models``."""
    settings.setdefault("model_refresh_interval", FAST_REFRESH)
    listed = ROUTER_MODELS if models is None else models
    return await make_stack(models=listed, model_name="auto", **settings)


async def models_with_series(stack: Stack) -> set[str]:
    samples = (await stack.snapshot())["vllm:num_requests_running"]["samples"]
    return {sample["labels"]["model_name"] for sample in samples}


async def wait_for_series(stack: Stack, *models: str, timeout: float = 5.0) -> set[str]:
    """Poll until each of ``models`` has series (the list is read on the proxy's timer)."""
    async with asyncio.timeout(timeout):
        while not set(models) <= (found := await models_with_series(stack)):  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    return found


async def model_list_reads(stack: Stack) -> int:
    return sum(1 for r in stack.state.requests if r.path == "/v1/models")


async def chat(stack: Stack, model: object, *, stream: bool = False) -> int:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    if model is not ...:
        body["model"] = model
    response = await stack.client.post(CHAT, data=orjson.dumps(body))
    await response.read()
    return response.status


async def successes(stack: Stack, model: str) -> float:
    return float(await stack.value(SUCCESS, model_name=model, finished_reason="stop"))


async def test_each_listed_model_gets_its_own_series_with_exact_counts(
    make_stack: StackFactory,
) -> None:
    stack = await auto_stack(make_stack)
    found = await wait_for_series(stack, "llama", "qwen", "llama-sql")
    assert found == {"other", "llama", "qwen", "llama-sql"}
    for _ in range(2):
        assert await chat(stack, "llama") == 200
    assert await chat(stack, "qwen", stream=True) == 200
    assert await successes(stack, "llama") == 2
    assert await successes(stack, "qwen") == 1
    assert await successes(stack, "llama-sql") == 0
    assert await successes(stack, "other") == 0
    # The fake reports 5 generated tokens a request: each model's own, exactly.
    assert await stack.value("vllm:generation_tokens_total", model_name="llama") == 10
    assert await stack.value("vllm:generation_tokens_total", model_name="qwen") == 5
    ttft = await stack.value("vllm:time_to_first_token_seconds", model_name="qwen")
    assert ttft["count"] == 1
    # Every family of every model exists at zero, as vLLM's do per engine.
    text = await (await stack.client.get("/metrics")).text()
    for model in ("llama", "qwen", "llama-sql", "other"):
        assert f'vllm:num_requests_waiting{{engine="proxy",model_name="{model}"}} 0' in text
        assert f'vllm:admission_rejections_total{{model_name="{model}",' in text


@pytest.mark.parametrize(
    "model",
    ["evil", "x" * 10_000, 42, ["llama"], {"id": "llama"}, None, True, ...],
    ids=["unlisted", "10kB", "number", "list", "object", "null", "bool", "absent"],
)
async def test_any_other_model_counts_as_other(make_stack: StackFactory, model: object) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "llama")
    assert await chat(stack, model) == 200
    assert await successes(stack, "other") == 1
    assert await successes(stack, "llama") == 0
    assert await models_with_series(stack) == {"other", "llama", "qwen", "llama-sql"}


async def test_the_list_is_read_again_on_its_timer(make_stack: StackFactory) -> None:
    stack = await auto_stack(make_stack, [{"id": "llama"}])
    await wait_for_series(stack, "llama")
    assert await chat(stack, "mistral") == 200  # not served yet: other
    stack.state.model_list = [{"id": "llama"}, {"id": "mistral"}]
    await wait_for_series(stack, "mistral")
    assert await chat(stack, "mistral") == 200
    assert await successes(stack, "mistral") == 1
    assert await successes(stack, "other") == 1


async def test_a_model_that_leaves_the_list_keeps_its_series(make_stack: StackFactory) -> None:
    stack = await auto_stack(make_stack, [{"id": "llama"}, {"id": "qwen"}])
    await wait_for_series(stack, "llama", "qwen")
    assert await chat(stack, "qwen") == 200
    stack.state.model_list = [{"id": "llama"}]
    reads = await model_list_reads(stack)
    await stack.state.wait_until(
        lambda s: sum(r.path == "/v1/models" for r in s.requests) >= reads + 2
    )
    # Its counters never go back (Prometheus would read a reset), and it still counts.
    assert await successes(stack, "qwen") == 1
    assert await chat(stack, "qwen") == 200
    assert await successes(stack, "qwen") == 2


@pytest.mark.parametrize(
    "answer",
    [(500, b'{"error": {"message": "router down"}}'), (200, b"not json"), (200, b'{"data": 7}')],
    ids=["500", "bad-json", "no-list"],
)
async def test_an_upstream_that_fails_the_list_keeps_the_last_one(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture, answer: tuple[int, bytes]
) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "llama")
    stack.state.models_answer = answer
    reads = await model_list_reads(stack)
    with caplog.at_level(logging.WARNING, logger="metrics_proxy"):
        await stack.state.wait_until(
            lambda s: sum(r.path == "/v1/models" for r in s.requests) >= reads + 2
        )
        assert await chat(stack, "llama") == 200
    assert await successes(stack, "llama") == 1
    warnings = [r.getMessage() for r in caplog.records if "cannot refresh" in r.getMessage()]
    assert warnings
    assert warnings[0].endswith("the last one stays")


async def test_a_hostile_list_is_bounded(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    long_name = "y" * (MAX_MODEL_NAME + 1)
    hostile: list[Any] = [{"id": long_name}, {"id": 7}, "model", {"no": "id"}]
    hostile += [{"id": f"m{i}"} for i in range(3 * MAX_MODELS)]
    with caplog.at_level(logging.WARNING, logger="metrics_proxy"):
        stack = await auto_stack(make_stack, hostile)
        await wait_for_series(stack, "m0", f"m{MAX_MODELS - 1}")
        assert await chat(stack, long_name) == 200
        assert await chat(stack, f"m{MAX_MODELS}") == 200
    found = await models_with_series(stack)
    assert found == {"other", *(f"m{i}" for i in range(MAX_MODELS))}
    assert await successes(stack, "other") == 2
    assert any("get no series of their own" in r.getMessage() for r in caplog.records)


async def test_a_list_past_the_size_cap_is_no_list(make_stack: StackFactory) -> None:
    entries = [{"id": "llama"}, *({"id": "z" * 100} for _ in range(20_000))]  # over 1 MiB
    stack = await auto_stack(make_stack, entries)
    await stack.state.wait_until(lambda s: sum(r.path == "/v1/models" for r in s.requests) >= 2)
    assert await models_with_series(stack) == {"other"}


async def test_failures_before_the_body_is_read_count_as_other(make_stack: StackFactory) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "llama")
    response = await stack.client.post(CHAT, data=b"{not json")
    assert response.status == 400
    assert await stack.value("proxy_errors_total", model_name="other", kind="bad_request") == 1
    assert await stack.value("proxy_errors_total", model_name="llama", kind="bad_request") == 0


async def test_an_upstream_failure_counts_under_the_requests_model(
    make_stack: StackFactory,
) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "qwen")
    body = orjson.dumps({"model": "qwen", "messages": []})
    response = await stack.client.post(
        CHAT, data=body, headers={"X-Fake-Behavior": '{"status": 500}'}
    )
    assert response.status == 500
    errors = await stack.value("proxy_errors_total", model_name="qwen", kind="upstream_status")
    assert errors == 1
    assert await stack.value(SUCCESS, model_name="qwen", finished_reason="error") == 1


async def test_a_forms_model_field_picks_its_series(make_stack: StackFactory) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "qwen")
    body = audio_form(("model", "qwen"), ("stream", "true"))
    response = await stack.client.post(TRANSCRIPTIONS, data=body, headers=FORM)
    assert response.status == 200
    await response.read()
    assert await successes(stack, "qwen") == 1
    assert await successes(stack, "other") == 0
    assert await stack.value("vllm:num_requests_running", model_name="other") == 0
    assert await stack.value("vllm:num_requests_running", model_name="qwen") == 0


async def test_a_fixed_model_name_ignores_the_body_and_reads_no_list(stack: Stack) -> None:
    assert await chat(stack, "qwen") == 200
    assert await successes(stack, "m") == 1
    assert await models_with_series(stack) == {"m"}
    assert await model_list_reads(stack) == 0


# What each metered route's body needs besides its model (chat's messages by default).
ROUTE_FIELDS: dict[str, dict[str, Any]] = {
    **{path: {k: v for k, v in body.items() if k != "model"} for path, body in BODIES.items()},
    "/v1/completions": {"prompt": "hi"},
    "/v1/messages": {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"input": "hi"},
    "/inference/v1/generate": {"token_ids": [1, 2], "sampling_params": {"max_tokens": 4}},
    "/generative_scoring": {"query": "q", "items": ["a"], "label_token_ids": [1]},
    "/v1/decisions": {"input": "hi"},
}
JSON_ROUTES = [
    path
    for path, api in API_BY_ROUTE.items()
    if isinstance(api, ApiChoice) or not streams_its_body(api)
]


async def _counted(stack: Stack, model: str) -> float:
    """Requests accounted under ``model``: finished (any reason), or refused upstream."""
    snapshot = await stack.snapshot()
    return sum(
        float(sample["value"])
        for name in (SUCCESS, "proxy_errors_total")
        for sample in snapshot[name]["samples"]
        if sample["labels"]["model_name"] == model
    )


@pytest.mark.parametrize("path", JSON_ROUTES)
async def test_every_metered_route_counts_under_the_bodys_model(
    make_stack: StackFactory, path: str
) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "qwen")
    fields = ROUTE_FIELDS.get(path, {"messages": [{"role": "user", "content": "hi"}]})
    response = await stack.client.post(path, data=orjson.dumps({"model": "qwen", **fields}))
    await response.read()
    assert (await _counted(stack, "qwen"), await _counted(stack, "other")) == (1, 0)


async def test_a_background_response_counts_under_its_model_when_retrieved(
    make_stack: StackFactory,
) -> None:
    stack = await auto_stack(make_stack)
    await wait_for_series(stack, "qwen")
    body = orjson.dumps({"model": "qwen", "input": "hi", "background": True})
    response = await stack.client.post("/v1/responses", data=body)
    response_id = (await response.json())["id"]
    await stack.state.wait_until(lambda s: s.responses[response_id].finished)
    assert await successes(stack, "qwen") == 0  # held until an answer shows it finished
    # The GET names no model: the record held since the POST counts under the POST's.
    retrieved = await stack.client.get(f"/v1/responses/{response_id}")
    assert retrieved.status == 200
    await retrieved.read()
    assert await successes(stack, "qwen") == 1
    assert await stack.value("vllm:generation_tokens_total", model_name="qwen") == 5
    assert await _counted(stack, "other") == 0


async def test_gauges_rejections_and_disconnects_are_each_models(
    make_stack: StackFactory,
) -> None:
    stack = await auto_stack(
        make_stack, behavior=Behavior(stall_before_headers=True), max_concurrency=1
    )
    await wait_for_series(stack, "llama", "qwen")

    def post(model: str) -> asyncio.Future[Any]:
        body = orjson.dumps({"model": model, "messages": [], "stream": True})
        return asyncio.ensure_future(stack.client.post(CHAT, data=body))

    holder = post("llama")
    await stack.state.wait_until(lambda s: any(r.method == "POST" for r in s.requests))
    waiter = post("qwen")
    await stack.wait_for("vllm:num_requests_waiting", 1, model_name="qwen")
    assert await stack.value("vllm:num_requests_running", model_name="llama") == 1
    assert await stack.value("vllm:num_requests_waiting", model_name="llama") == 0
    for task in (waiter, holder):
        task.cancel()
    await stack.wait_for("vllm:num_requests_running", 0, model_name="llama")
    await stack.wait_for("vllm:num_requests_waiting", 0, model_name="qwen")
    disconnects = "proxy_client_disconnects_total"
    assert await stack.value(disconnects, model_name="qwen", stage="waiting") == 1
    assert await stack.value(disconnects, model_name="llama", stage="before_headers") == 1
    assert await stack.value(SUCCESS, model_name="qwen", finished_reason="abort") == 1
    assert await stack.value(SUCCESS, model_name="llama", finished_reason="abort") == 1
    assert await _counted(stack, "other") == 0


async def test_a_queue_refusal_counts_under_the_requests_model(make_stack: StackFactory) -> None:
    stalled = Behavior(stall_before_headers=True)
    stack = await auto_stack(make_stack, behavior=stalled, max_concurrency=1, max_queue_wait=0.05)
    await wait_for_series(stack, "qwen")
    holder = asyncio.ensure_future(
        stack.client.post(CHAT, data=orjson.dumps({"model": "llama", "messages": []}))
    )
    await stack.state.wait_until(lambda s: any(r.method == "POST" for r in s.requests))
    late = await stack.client.post(CHAT, data=orjson.dumps({"model": "qwen", "messages": []}))
    assert late.status == 503
    rejections = "vllm:admission_rejections_total"
    assert await stack.value(rejections, model_name="qwen", reason="max_queue_wait") == 1
    assert await stack.value(rejections, model_name="llama", reason="max_queue_wait") == 0
    holder.cancel()
    await stack.wait_for("vllm:num_requests_running", 0, model_name="llama")


async def test_a_tenants_series_carry_the_model_each_request_asked_for(
    make_stack: StackFactory,
) -> None:
    """With attribution too, a tenant's series join vLLM's by model_name: one per model it
    used, never one labelled "auto"."""
    stack = await auto_stack(make_stack, tenant_header="X-Tenant")
    await wait_for_series(stack, "llama", "qwen")
    for model in ("llama", "llama", "qwen", "evil"):
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
        response = await stack.client.post(
            CHAT, data=orjson.dumps(body), headers={"X-Tenant": "team-a"}
        )
        await response.read()
        assert response.status == 200
    requests = "proxy_tenant_requests_total"
    for model, count in (("llama", 2), ("qwen", 1), ("other", 1)):
        assert await stack.value(requests, model_name=model, tenant="team-a", outcome="stop") == (
            count
        )
        tokens = await stack.value(
            "proxy_tenant_generation_tokens_total", model_name=model, tenant="team-a"
        )
        assert tokens == await stack.value("vllm:generation_tokens_total", model_name=model)
    samples = (await stack.snapshot())["proxy_tenant_queue_time_seconds"]["samples"]
    assert {sample["labels"]["model_name"] for sample in samples} == {"llama", "qwen", "other"}
