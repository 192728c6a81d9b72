"""A storm of mixed requests and faults; afterwards every number equals the ground truth.

The suite runs a bounded storm; `make storm` (STORM_REQUESTS=5000) runs a larger one.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import orjson

from tests.support.fake_upstream import BEHAVIOR_HEADER, FakeUpstreamState
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
REQUESTS = int(os.environ.get("STORM_REQUESTS", "600"))
CONCURRENCY = 48


@dataclass
class Truth:
    """What the storm did, kept by the test itself."""

    reasons: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    generation_tokens: int = 0
    prompt_tokens: int = 0
    estimated: int = 0
    disconnects: int = 0
    rejected_4xx: int = 0


def body(stream: bool) -> bytes:
    return orjson.dumps({"model": "m", "messages": [], "stream": stream})


def steer(**behavior: object) -> dict[str, str]:
    """Headers that tell the fake upstream how to answer this request."""
    return {BEHAVIOR_HEADER: orjson.dumps(behavior).decode()}


async def one(
    session: aiohttp.ClientSession,
    url: str,
    kind: str,
    rng: random.Random,
    truth: Truth,
    state: FakeUpstreamState,
) -> None:
    """Send one request of ``kind`` and add what it must do to the metrics to ``truth``."""
    tokens = rng.randint(1, 8)
    split = rng.choice([0, 0, 1, 7, 64])
    if kind == "stream":
        headers = steer(completion_tokens=tokens, split=split, crlf=rng.random() < 0.3)
        async with session.post(url, data=body(True), headers=headers) as r:
            assert r.status == 200
            assert (await r.read()).endswith((b"[DONE]\n\n", b"[DONE]\r\n\r\n"))
        truth.reasons["stop"] += 1
        truth.generation_tokens += tokens
        truth.prompt_tokens += 7
    elif kind == "plain":
        headers = steer(completion_tokens=tokens, finish_reason="length")
        async with session.post(url, data=body(False), headers=headers) as r:
            assert r.status == 200
            await r.read()
        truth.reasons["length"] += 1
        truth.generation_tokens += tokens
        truth.prompt_tokens += 7
    elif kind == "leave_mid_stream":
        headers = steer(completion_tokens=50, stall_after=tokens)
        r = await session.post(url, data=body(True), headers=headers)
        seen = b""
        while seen.count(b'"content":"tok') < tokens:
            seen += await r.content.readany()
        r.close()
        truth.reasons["abort"] += 1
        truth.generation_tokens += tokens
        truth.estimated += 1
        truth.disconnects += 1
    elif kind == "leave_early":
        # Leaves while the upstream has not answered yet: once the upstream holds the request,
        # so that the proxy has certainly seen it (a client gone before that was never seen).
        tag = f"early-{rng.random()}"
        headers = steer(stall_before_headers=True) | {"X-Request-Id": tag}
        task = asyncio.ensure_future(session.post(url, data=body(True), headers=headers))
        await state.wait_until(
            lambda s: any(r.headers.get("X-Request-Id") == tag for r in s.requests), timeout=30
        )
        task.cancel()
        truth.reasons["abort"] += 1
        truth.disconnects += 1
    elif kind in ("upstream_429", "upstream_500"):
        status = 429 if kind == "upstream_429" else 500
        async with session.post(url, data=body(True), headers=steer(status=status)) as r:
            assert r.status == status
            await r.read()
        truth.errors["upstream_status"] += 1
        if status >= 500:
            truth.reasons["error"] += 1
        else:
            truth.rejected_4xx += 1
    elif kind == "reset":
        headers = steer(completion_tokens=20, reset_after=tokens)
        async with session.post(url, data=body(True), headers=headers) as r:
            data = await r.read()
        assert data.endswith(b"\n\n")
        assert b'"error"' in data.rsplit(b"\n\n", 2)[-2]
        truth.reasons["error"] += 1
        truth.errors["upstream_disconnect"] += 1
        truth.generation_tokens += tokens
        truth.estimated += 1
    elif kind == "stall":
        headers = steer(completion_tokens=20, stall_after=tokens)
        async with session.post(url, data=body(True), headers=headers) as r:
            data = await r.read()
        assert b'"error"' in data.rsplit(b"\n\n", 2)[-2]
        truth.reasons["error"] += 1
        truth.errors["timeout"] += 1
        truth.generation_tokens += tokens
        truth.estimated += 1
    elif kind in NEW_ROUTES:
        await other_api(session, url.rsplit(CHAT, 1)[0], kind, tokens, split, truth)
    elif kind == "malformed":
        async with session.post(url, data=b'{"messages": [') as r:
            assert r.status == 400
        truth.errors["bad_request"] += 1
    else:
        raise AssertionError(kind)


# The other metered APIs, in the same storm: (path, body, streamed answer's end).
NEW_ROUTES: dict[str, tuple[str, bytes, bytes | None]] = {
    "messages": (
        "/v1/messages",
        orjson.dumps({"model": "m", "max_tokens": 50, "messages": [], "stream": True}),
        b'"message_stop"}\n\n',
    ),
    "responses": (
        "/v1/responses",
        orjson.dumps({"model": "m", "input": "hi", "stream": True}),
        None,
    ),
    "embeddings": ("/v1/embeddings", orjson.dumps({"model": "m", "input": ["a", "b"]}), None),
    "rerank": ("/v2/rerank", orjson.dumps({"model": "m", "query": "q", "documents": ["d"]}), None),
    "cohere": (
        "/cohere/v2/chat",
        orjson.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        ),
        None,
    ),
    "generate": (
        "/inference/v1/generate",
        orjson.dumps(
            {"token_ids": [1, 2, 3], "sampling_params": {"max_tokens": 9}, "stream": True}
        ),
        b"data: [DONE]\n\n",
    ),
}


async def other_api(
    session: aiohttp.ClientSession, base: str, kind: str, tokens: int, split: int, truth: Truth
) -> None:
    """A request to another metered API, answered in full: its tokens count exactly."""
    path, data, end = NEW_ROUTES[kind]
    headers = steer(completion_tokens=tokens, split=split)
    async with session.post(base + path, data=data, headers=headers) as r:
        assert r.status == 200, (kind, r.status)
        answer = await r.read()
    if end is not None:
        assert answer.endswith(end), answer[-80:]
    truth.reasons["stop"] += 1
    truth.prompt_tokens += 7
    if kind in ("messages", "responses", "cohere", "generate"):
        truth.generation_tokens += tokens


KINDS = {
    "stream": 30, "plain": 15, "leave_mid_stream": 10, "leave_early": 10, "upstream_429": 5,
    "upstream_500": 5, "reset": 8, "stall": 7, "malformed": 10,
    "messages": 6, "responses": 6, "embeddings": 6, "rerank": 4, "cohere": 4, "generate": 4,
}  # fmt: skip


OTHER_PATHS = frozenset(path for path, _, _ in NEW_ROUTES.values())


async def storm(stack: Stack, rng: random.Random) -> Truth:
    truth = Truth()
    url = str(stack.client.make_url(CHAT))
    kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=REQUESTS)
    semaphore = asyncio.Semaphore(CONCURRENCY)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def run(kind: str) -> None:
            async with semaphore:
                await one(session, url, kind, rng, truth, stack.state)

        await asyncio.gather(*(run(kind) for kind in kinds))
    return truth


async def test_fault_storm_leaves_exact_numbers(make_stack: StackFactory) -> None:
    stack = await make_stack(max_concurrency=16, read_timeout=0.3)
    rng = random.Random(20261126)
    async with asyncio.timeout(120):
        truth = await storm(stack, rng)
        # Every handler has settled once both gauges are back at zero.
        await stack.wait_for("vllm:num_requests_running", 0, timeout=10)
        await stack.wait_for("vllm:num_requests_waiting", 0, timeout=10)
        # The upstream saw every request it got end: completed, reset by itself, or closed.
        state = stack.state
        generated = [r for r in state.requests if r.path == CHAT or r.path in OTHER_PATHS]
        await state.wait_until(
            lambda s: s.completed + s.resets + s.closed_early == len(generated) and s.active == 0,
            timeout=10,
        )

    snapshot = await stack.snapshot()

    def series(name: str, label: str) -> dict[str, float]:
        return {s["labels"][label]: s["value"] for s in snapshot[name]["samples"]}

    reasons = series("vllm:request_success_total", "finished_reason")
    assert {k: v for k, v in reasons.items() if v} == dict(truth.reasons)
    errors = series("proxy_errors_total", "kind")
    assert {k: v for k, v in errors.items() if v} == dict(truth.errors)
    assert sum(series("proxy_client_disconnects_total", "stage").values()) == truth.disconnects
    assert (
        snapshot["vllm:generation_tokens_total"]["samples"][0]["value"] == truth.generation_tokens
    )
    assert snapshot["vllm:prompt_tokens_total"]["samples"][0]["value"] == truth.prompt_tokens
    assert snapshot["proxy_estimated_token_counts_total"]["samples"][0]["value"] == truth.estimated
    completed = truth.reasons["stop"] + truth.reasons["length"]
    assert snapshot["vllm:e2e_request_latency_seconds"]["samples"][0]["count"] == completed
    # The proxy still serves a normal request.
    response = await stack.client.post(CHAT, data=body(True))
    assert response.status == 200
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    assert await stack.gauges() == (0, 0)
