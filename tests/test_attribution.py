"""Attribution through HTTP: who sent each request, in the proxy_tenant_* series and the log;
never a raw key; bounded however many tenants a client invents; and a tenant that floods the
queue cannot starve a light one."""

from __future__ import annotations

import asyncio
import logging

import orjson
import pytest

from metrics_proxy.tenants import key_tag
from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
SALT = "fleet-wide salt, 16+ chars"
TOKEN = "sk-client-CANARY-4242"
TENANT_FAMILIES = (
    "proxy_tenant_requests_total",
    "proxy_tenant_prompt_tokens_total",
    "proxy_tenant_generation_tokens_total",
    "proxy_tenant_queue_time_seconds",
)


def body(tag: str = "x", *, stream: bool = True) -> bytes:
    content = [{"role": "user", "content": tag}]
    return orjson.dumps({"model": "m", "messages": content, "stream": stream})


async def post(stack: Stack, tenant: str | None, tag: str = "x", **headers: str) -> int:
    if tenant is not None:
        headers["X-Tenant"] = tenant
    response = await stack.client.post(CHAT, data=body(tag), headers=headers)
    await response.read()
    return response.status


async def counted(stack: Stack, tenant: str, outcome: str) -> None:
    """Wait (bounded) until ``tenant`` has one request of ``outcome``: its series appears
    when the request settles, which nothing the test holds tells."""
    async with asyncio.timeout(5):
        while True:
            try:
                if await stack.value("proxy_tenant_requests_total", tenant=tenant, outcome=outcome):
                    return
            except KeyError:
                pass
            await asyncio.sleep(0.005)


async def tenants_of(stack: Stack, family: str) -> set[str]:
    samples = (await stack.snapshot())[family]["samples"]
    return {sample["labels"]["tenant"] for sample in samples}


async def test_the_header_names_the_tenant_of_requests_and_tokens(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    stack = await make_stack(
        Behavior(prompt_tokens=7, completion_tokens=5), tenant_header="X-Tenant"
    )
    for tenant in ("team-a", "team-a", "team-b", None):
        assert await post(stack, tenant) == 200
    value = stack.value
    assert await value("proxy_tenant_requests_total", tenant="team-a", outcome="stop") == 2
    assert await value("proxy_tenant_requests_total", tenant="team-b", outcome="stop") == 1
    assert await value("proxy_tenant_requests_total", tenant="unknown", outcome="stop") == 1
    assert await value("proxy_tenant_prompt_tokens_total", tenant="team-a") == 14
    assert await value("proxy_tenant_generation_tokens_total", tenant="team-a") == 10
    queue = await value("proxy_tenant_queue_time_seconds", tenant="team-b")
    assert queue["count"] == 1
    # The same labels as the other proxy_* series, and vLLM's own families untouched.
    sample = (await stack.snapshot())["proxy_tenant_prompt_tokens_total"]["samples"][0]
    assert set(sample["labels"]) == {"model_name", "engine", "tenant"}
    assert await value("vllm:prompt_tokens_total") == 28
    lines = [r.getMessage() for r in caplog.records if "chat/completions" in r.getMessage()]
    assert [line.split(" tenant=")[1].split()[0] for line in lines] == [
        "team-a", "team-a", "team-b", "unknown"
    ]  # fmt: skip


async def test_the_text_exposition_escapes_a_tenant(make_stack: StackFactory) -> None:
    stack = await make_stack(tenant_header="X-Tenant")
    assert await post(stack, 'q"uo\\te') == 200
    text = await (await stack.client.get("/metrics")).text()
    assert 'outcome="stop",tenant="q\\"uo\\\\te"} 1.0' in text


async def test_a_key_is_counted_by_its_tag_and_never_shown(
    make_stack: StackFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    stack = await make_stack(
        tenant_from_api_key=True, tenant_salt=SALT, api_key=f"{TOKEN},other-key"
    )
    assert await post(stack, None, Authorization=f"Bearer {TOKEN}") == 200
    tag = key_tag(SALT.encode(), TOKEN)
    assert await stack.value("proxy_tenant_requests_total", tenant=tag, outcome="stop") == 1
    exposed = await (await stack.client.get("/metrics")).text()
    exposed += await (await stack.client.get("/internal/metrics")).text()
    assert tag in exposed
    for secret in (TOKEN, "CANARY", SALT):
        assert secret not in exposed
        assert secret not in caplog.text
    assert f"tenant={tag}" in caplog.text


async def test_the_gateways_header_comes_before_the_key(make_stack: StackFactory) -> None:
    stack = await make_stack(tenant_header="X-Tenant", tenant_from_api_key=True, tenant_salt=SALT)
    assert await post(stack, "team-a", Authorization=f"Bearer {TOKEN}") == 200
    assert await post(stack, None, Authorization=f"Bearer {TOKEN}") == 200
    tag = key_tag(SALT.encode(), TOKEN)
    assert await tenants_of(stack, "proxy_tenant_requests_total") == {"team-a", tag}


async def test_a_hostile_client_cannot_grow_the_series(make_stack: StackFactory) -> None:
    stack = await make_stack(tenant_header="X-Tenant", tenant_limit=5)
    async with asyncio.timeout(60):
        for batch in range(20):
            statuses = await asyncio.gather(
                *(post(stack, f"forged-{batch}-{i}") for i in range(50))
            )
            assert set(statuses) == {200}
    metrics = await (await stack.client.get("/metrics")).text()
    tenant_lines = [line for line in metrics.splitlines() if line.startswith("proxy_tenant_")]
    assert len({line.split('tenant="')[1].split('"')[0] for line in tenant_lines}) == 6
    assert await stack.value("proxy_tenant_requests_total", tenant="other", outcome="stop") == 995
    # Per tenant: a requests series, two token counters, a histogram of 22 buckets + 2.
    assert len(tenant_lines) == 6 * (1 + 2 + 24)


async def test_no_tenant_series_without_attribution(make_stack: StackFactory) -> None:
    stack = await make_stack()
    assert await post(stack, "team-a") == 200
    assert not set(TENANT_FAMILIES) & set(await stack.snapshot())


async def test_other_is_there_from_the_start(make_stack: StackFactory) -> None:
    stack = await make_stack(tenant_header="X-Tenant")
    assert await stack.value("proxy_tenant_prompt_tokens_total", tenant="other") == 0
    assert await tenants_of(stack, "proxy_tenant_requests_total") == set()


async def test_a_refused_request_is_rejected_and_a_leaver_aborted(make_stack: StackFactory) -> None:
    stack = await make_stack(
        Behavior(stall_before_headers=True),
        tenant_header="X-Tenant",
        max_concurrency=1,
        max_queue_length=1,
    )
    holder = asyncio.ensure_future(post(stack, "holder"))
    await stack.state.wait_for_requests(1)
    leaver = asyncio.ensure_future(post(stack, "leaver"))
    await stack.wait_for("vllm:num_requests_waiting", 1)
    assert await post(stack, "refused") == 429
    leaver.cancel()
    await counted(stack, "leaver", "abort")
    holder.cancel()
    await counted(stack, "holder", "abort")
    assert await stack.value("proxy_tenant_requests_total", tenant="refused") == 1
    assert await stack.value("proxy_tenant_requests_total", tenant="refused", outcome="rejected")
    assert await stack.value("proxy_tenant_generation_tokens_total", tenant="refused") == 0


async def test_an_upstream_refusal_is_rejected(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(status=400), tenant_header="X-Tenant")
    assert await post(stack, "team-a") == 400
    samples = (await stack.snapshot())["proxy_tenant_requests_total"]["samples"]
    assert [(s["labels"]["outcome"], s["value"]) for s in samples] == [("rejected", 1)]


# --- Fairness ----------------------------------------------------------------------------


def order(stack: Stack) -> list[str]:
    return [orjson.loads(r.body)["messages"][0]["content"] for r in stack.state.requests]


async def test_a_flooding_tenant_cannot_starve_a_light_one(make_stack: StackFactory) -> None:
    stack = await make_stack(
        Behavior(),
        tenant_header="X-Tenant",
        max_concurrency=2,
        tenant_max_share=0.5,
    )
    stalled = {BEHAVIOR_HEADER: orjson.dumps({"stall_before_headers": True}).decode()}
    # The flood takes both slots (nobody else waits) and queues ten more behind them.
    holders = [asyncio.ensure_future(post(stack, "flood", f"hold{i}", **stalled)) for i in range(2)]
    await stack.state.wait_for_requests(2)
    flood = [asyncio.ensure_future(post(stack, "flood", f"f{i}", **stalled)) for i in range(10)]
    await stack.wait_for("vllm:num_requests_waiting", 10)
    light = asyncio.ensure_future(post(stack, "light", "light"))
    await stack.wait_for("vllm:num_requests_waiting", 11)

    holders[0].cancel()  # a slot frees: the light tenant's, ahead of ten older flood requests
    assert await asyncio.wait_for(light, 5) == 200
    assert order(stack)[2] == "light"
    await stack.state.wait_for_requests(4)  # its slot went back to the flood, in its order
    assert order(stack)[3] == "f0"
    for task in (*flood, holders[1]):
        task.cancel()
    await stack.wait_for("vllm:num_requests_running", 0)
    await stack.wait_for("vllm:num_requests_waiting", 0)
    queued = await stack.value("proxy_tenant_queue_time_seconds", tenant="light")
    assert queued["count"] == 1
