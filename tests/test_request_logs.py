"""What the log says about requests that did not go as asked: a request the proxy refuses
itself is one INFO line with its reason; an upstream failure is one WARNING line with its
cause, and the client's answer names no internal address."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from metrics_proxy.server import LIFECYCLE
from tests.support.fake_upstream import Behavior
from tests.support.raw_peers import read_message
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": [], "stream": True})


def proxy_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "metrics_proxy"]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    return caplog


# --- Refusals ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    settings: dict[str, Any]
    method: str
    path: str
    status: int
    reason: str
    headers: dict[str, str] | None = None
    body: bytes | None = BODY


REFUSALS = {
    "bad JSON": Refusal({}, "POST", CHAT, 400, "Request body is not valid JSON", body=b"{nope"),
    "not an object": Refusal({}, "POST", CHAT, 400, "must be a JSON object", body=b"[1]"),
    "encoded slash": Refusal({}, "POST", "/v1/chat%2Fcompletions", 400, "Percent-encoded"),
    "no API key": Refusal(
        {"api_key": "k1"}, "POST", CHAT, 401, "A valid API key is required",
        headers={"Authorization": "Bearer WRONG-CANARY"},
    ),
    "no admin token": Refusal(
        {"admin_token": "t"}, "GET", "/metrics", 401, "A valid admin bearer token is required",
        body=None,
    ),
    "admin route": Refusal({}, "POST", "/sleep", 403, "administrative routes"),
    "metrics disabled": Refusal(
        {"disable_metrics_endpoint": True}, "GET", "/metrics", 404, "is disabled", body=None
    ),
    "wrong method": Refusal({}, "GET", CHAT, 405, "Method GET is not allowed here", body=None),
    "too large": Refusal({"max_body_size": 10}, "POST", CHAT, 413, "larger than the proxy's"),
    "compressed": Refusal(
        {}, "POST", CHAT, 415, "Compressed request bodies", headers={"Content-Encoding": "gzip"}
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
async def test_a_refusal_is_one_info_line_with_its_reason(
    make_stack: StackFactory, logs: pytest.LogCaptureFixture, case: Refusal
) -> None:
    stack = await make_stack(**case.settings)
    response = await stack.client.request(
        case.method, case.path, data=case.body, headers=case.headers
    )
    assert response.status == case.status
    await response.read()
    (record,) = proxy_lines(logs)
    assert record.levelno == logging.INFO
    line = record.getMessage()
    assert line.startswith(f"refused {case.method} ")
    assert f" status={case.status} " in line
    assert case.reason in line.partition(" reason=")[2]
    assert "CANARY" not in logs.text
    assert stack.state.requests == []


async def test_a_refusal_names_the_request_by_its_id(
    stack: Stack, logs: pytest.LogCaptureFixture
) -> None:
    headers = {"X-Request-Id": "req-9"}
    response = await stack.client.post(CHAT, data=b"{nope", headers=headers)
    assert response.status == 400
    assert response.headers["X-Request-Id"] == "req-9"
    (record,) = proxy_lines(logs)
    assert record.getMessage().endswith(" request_id=req-9")


async def test_a_body_that_never_comes_is_a_408_refusal(
    make_stack: StackFactory, logs: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack(client_timeout=0.1)
    server = stack.client.server
    for path in (CHAT, "/tokenize"):  # metered, then forwarded
        reader, writer = await asyncio.open_connection(server.host, server.port)
        try:
            writer.write(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n".encode())
            writer.write(b'{"messages": ')
            async with asyncio.timeout(10):
                answer = await read_message(reader)
        finally:
            writer.close()
        assert answer.status == 408
    lines = [record.getMessage() for record in proxy_lines(logs)]
    assert [line.split(" status=")[0] for line in lines] == [
        f"refused POST {CHAT}",
        "refused POST /tokenize",
    ]
    assert all("did not arrive in time" in line for line in lines)


async def test_a_draining_proxy_logs_what_it_turns_away(
    stack: Stack, logs: pytest.LogCaptureFixture
) -> None:
    stack.client.app[LIFECYCLE].draining = True
    response = await stack.client.post(CHAT, data=BODY)
    assert response.status == 503
    (record,) = proxy_lines(logs)
    assert "status=503" in record.getMessage()
    assert "shutting down" in record.getMessage()


@pytest.mark.parametrize(
    ("settings", "status", "reason"),
    [
        ({"max_queue_length": 1}, 429, "queue is full: 1 requests are already waiting"),
        ({"max_queue_wait": 0.05}, 503, "Waited too long in the proxy's queue"),
    ],
)
async def test_a_queue_refusal_s_line_says_why(
    make_stack: StackFactory,
    logs: pytest.LogCaptureFixture,
    settings: dict[str, Any],
    status: int,
    reason: str,
) -> None:
    stack = await make_stack(Behavior(stall_before_headers=True), max_concurrency=1, **settings)
    holder = asyncio.ensure_future(stack.client.post(CHAT, data=BODY))
    await stack.state.wait_for_requests(1)
    waiter = None
    if status == 429:
        waiter = asyncio.ensure_future(stack.client.post(CHAT, data=BODY))
        await stack.wait_for("vllm:num_requests_waiting", 1)
    refused = await stack.client.post(CHAT, data=BODY)
    assert refused.status == status
    (record,) = proxy_lines(logs)
    line = record.getMessage()
    assert f"status={status} finished_reason=rejected" in line
    assert reason in line.partition(" reason=")[2]
    for task in (waiter, holder):
        if task is not None:
            task.cancel()
    await stack.wait_for("vllm:num_requests_running", 0)
