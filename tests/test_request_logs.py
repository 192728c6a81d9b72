"""What the log says about requests that did not go as asked: a request the proxy refuses
itself is one INFO line with its reason; an upstream failure is one WARNING line with its
cause, and the client's answer names no internal address."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from metrics_proxy.server import LIFECYCLE
from tests.support.fake_upstream import Behavior
from tests.support.processes import free_port
from tests.support.raw_peers import Answer, RawMessage, RawUpstream, read_message, response_head
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


# --- Upstream failures ------------------------------------------------------------------------


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in proxy_lines(caplog) if r.levelno == logging.WARNING]


def cause_of(line: str) -> str:
    found = re.search(r' cause=("(?:[^"\\]|\\.)*"|\S+)', line)
    assert found is not None, line
    text = found[1]
    return str(orjson.loads(text)) if text.startswith('"') else text


@pytest.mark.parametrize(("method", "path"), [("POST", CHAT), ("GET", "/v1/models")])
async def test_a_refused_connection_is_logged_with_the_address_the_client_never_sees(
    make_stack: StackFactory, logs: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    port = free_port()  # nothing listens there
    stack = await make_stack(upstream_url=f"http://127.0.0.1:{port}")
    response = await stack.client.request(method, path, data=BODY if method == "POST" else None)
    assert response.status == 502
    body = await response.text()
    assert "Upstream unreachable" in body
    assert "127.0.0.1" not in body
    assert str(port) not in body
    (line,) = warnings_of(logs)
    assert line.startswith(f"{method} {path} status=502 ")
    assert " error=connect " in line
    assert cause_of(line) == f"connect to 127.0.0.1:{port}: connection refused"
    assert len(proxy_lines(logs)) == 1  # one line per failed request


STALL = Behavior(stall_before_headers=True)
STALL_MID_STREAM = Behavior(stall_after=2)


@pytest.mark.parametrize(
    ("behavior", "settings", "status", "cause"),
    [
        (
            STALL,
            {"read_timeout": 0.1},
            504,
            "read timeout (--read-timeout) reading the answer's head",
        ),
        (STALL_MID_STREAM, {"read_timeout": 0.1}, 200, "read timeout (--read-timeout) mid-body"),
        (
            STALL,
            {"request_timeout": 0.1},
            504,
            "whole-request limit (--request-timeout) reading the answer's head",
        ),
        (
            STALL_MID_STREAM,
            {"request_timeout": 0.1},
            200,
            "whole-request limit (--request-timeout) mid-body",
        ),
        (Behavior(reset_after=2), {}, 200, "ClientPayloadError mid-body"),
    ],
    ids=["read-head", "read-body", "whole-head", "whole-body", "reset-body"],
)
async def test_a_timeout_or_cut_answer_says_which_and_when(
    make_stack: StackFactory,
    logs: pytest.LogCaptureFixture,
    behavior: Behavior,
    settings: dict[str, Any],
    status: int,
    cause: str,
) -> None:
    stack = await make_stack(behavior, **settings)
    response = await stack.client.post(CHAT, data=BODY)
    assert response.status == status
    await response.read()
    await stack.wait_for("vllm:num_requests_running", 0)
    (line,) = warnings_of(logs)
    assert line.startswith(f"POST {CHAT} status={status} finished_reason=error ")
    assert cause_of(line) == cause
    assert len(proxy_lines(logs)) == 1


async def test_an_error_event_in_the_stream_is_a_failure_with_its_cause(
    make_stack: StackFactory, logs: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack(Behavior(error_after=1))
    body = orjson.dumps({"model": "m", "max_tokens": 9, "messages": [], "stream": True})
    response = await stack.client.post("/v1/messages", data=body)
    await response.read()
    (line,) = warnings_of(logs)
    assert " error=upstream_stream_error " in line
    assert cause_of(line) == "an error event in the upstream's stream"


def _answer_with(status: int, body: bytes) -> Answer:
    async def answer(
        request: RawMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        length = f"Content-Length: {len(body)}"
        writer.write(response_head(status, "Content-Type: application/json", length) + body)
        await writer.drain()

    return answer


VALIDATION = (
    "1 validation error for ChatCompletionRequest\nmessages.0.content\n  Input should be a "
    "valid string [type=string_type, input_value={'text': 'CANARY prompt'}, input_type=dict]"
)


@pytest.mark.parametrize(
    ("status", "body", "cause"),
    [
        (
            503,
            orjson.dumps({"error": {"message": "engine is dead", "param": "CANARY-body"}}),
            "upstream answered 503: engine is dead",
        ),
        (
            400,
            orjson.dumps({"object": "error", "message": VALIDATION, "type": "BadRequestError"}),
            "upstream answered 400: 1 validation error for ChatCompletionRequest\n"
            "messages.0.content\n  Input should be a valid string",
        ),
        (
            404,
            orjson.dumps({"type": "error", "error": {"type": "x", "message": "m" * 300}}),
            "upstream answered 404: " + "m" * 200 + "...",
        ),
        (502, b"<html>CANARY bad gateway</html>", "upstream answered 502"),
    ],
    ids=["openai-shape", "vllm-validation", "long-message", "not-json"],
)
async def test_an_upstream_error_answer_is_logged_with_its_message_only(
    make_stack: StackFactory,
    logs: pytest.LogCaptureFixture,
    status: int,
    body: bytes,
    cause: str,
) -> None:
    async with RawUpstream(_answer_with(status, body)) as upstream:
        stack = await make_stack(upstream_url=upstream.url)
        response = await stack.client.post(CHAT, data=BODY)
        assert (response.status, await response.read()) == (status, body)  # untouched
    (line,) = warnings_of(logs)
    assert line.startswith(f"POST {CHAT} status={status} ")
    assert " error=upstream_status " in line
    assert cause_of(line) == cause
    assert "CANARY" not in logs.text
    assert len(line.splitlines()) == 1


async def test_a_forwarded_answer_is_logged_when_it_is_a_5xx_only(
    make_stack: StackFactory, logs: pytest.LogCaptureFixture
) -> None:
    body = orjson.dumps({"error": {"message": "no such thing"}})

    async def answer(
        request: RawMessage, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        status = 500 if request.target == "/broken" else 404
        await _answer_with(status, body)(request, reader, writer)

    async with RawUpstream(answer) as upstream:
        stack = await make_stack(upstream_url=upstream.url)
        for path, status in (("/broken", 500), ("/missing", 404)):
            response = await stack.client.get(path)
            assert (response.status, await response.read()) == (status, body)
    (line,) = warnings_of(logs)  # the 404 is the client's business: no line
    assert line.startswith("GET /broken status=500 error=upstream_status ")
    assert cause_of(line) == "upstream answered 500: no such thing"
