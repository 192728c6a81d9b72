"""The end of a drain, in process: streams still open end with their API's error event and
count as aborts (the server ended them: no client disconnect, no upstream error), while a
client that leaves during the drain is still a client disconnect. The real command's signals
are tested in test_shutdown.py."""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import aiohttp
import orjson
import pytest

from metrics_proxy.lifecycle import EndedByShutdown, Lifecycle
from metrics_proxy.server import LIFECYCLE
from tests.support.fake_upstream import Behavior
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
STREAM = b'{"messages": [], "stream": true}'
MESSAGES_STREAM = b'{"model": "m", "max_tokens": 16, "messages": [], "stream": true}'
SHUTTING_DOWN = {
    "message": "The proxy is shutting down: the stream was ended before it finished",
    "type": "overloaded_error",
    "code": 503,
}


async def read_until(response: aiohttp.ClientResponse, marker: bytes, count: int) -> bytes:
    seen = b""
    async with asyncio.timeout(5):
        while seen.count(marker) < count:
            seen += await response.content.readany()
    return seen


def last_event(stream: bytes) -> list[bytes]:
    return stream.removesuffix(b"\n\n").rsplit(b"\n\n", 1)[-1].split(b"\n")


async def totals(stack: Stack, name: str) -> float:
    """The sum of every series of a counter family."""
    return float(sum(sample["value"] for sample in (await stack.snapshot())[name]["samples"]))


async def end_the_drain(stack: Stack) -> None:
    lifecycle = stack.client.app[LIFECYCLE]
    lifecycle.draining = True
    lifecycle.end_streams()


async def assert_ended_by_the_server(stack: Stack, tokens_seen: int) -> None:
    await stack.state.wait_for_closed(1)  # the upstream is let go, so vLLM aborts it too
    await stack.wait_for("vllm:num_requests_running", 0)
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    assert await totals(stack, "vllm:request_success_total") == 1
    assert await totals(stack, "proxy_client_disconnects_total") == 0
    assert await totals(stack, "proxy_errors_total") == 0
    assert await stack.value("vllm:generation_tokens_total") == tokens_seen
    assert await stack.gauges() == (0, 0)


async def test_an_open_chat_stream_ends_with_an_error_event_as_an_abort(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(CHAT, data=STREAM)
    seen = await read_until(response, b'"content":"tok', 2)
    await end_the_drain(stack)
    async with asyncio.timeout(5):
        stream = seen + await response.read()  # a whole stream: no cut connection
    assert b"[DONE]" not in stream
    (line,) = last_event(stream)
    assert orjson.loads(line.removeprefix(b"data: ")) == {"error": SHUTTING_DOWN}
    await assert_ended_by_the_server(stack, tokens_seen=2)


async def test_an_open_messages_stream_ends_with_anthropics_error_event(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(MESSAGES, data=MESSAGES_STREAM)
    seen = await read_until(response, b'"text_delta"', 2)
    await end_the_drain(stack)
    async with asyncio.timeout(5):
        stream = seen + await response.read()
    name, data = last_event(stream)
    assert name == b"event: error"
    event: dict[str, Any] = orjson.loads(data.removeprefix(b"data: "))
    assert event == {"type": "error", "error": SHUTTING_DOWN}
    await assert_ended_by_the_server(stack, tokens_seen=2)


async def test_a_client_leaving_during_the_drain_is_a_client_disconnect(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(CHAT, data=STREAM)
    await read_until(response, b'"content":"tok', 2)
    stack.client.app[LIFECYCLE].draining = True
    response.close()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1


def stream_reader() -> aiohttp.StreamReader:
    protocol = mock.Mock(_reading_paused=False)
    return aiohttp.StreamReader(protocol, limit=1 << 16, loop=asyncio.get_running_loop())


async def test_a_stream_that_begins_after_the_end_is_ended_at_its_first_read() -> None:
    lifecycle = Lifecycle()
    lifecycle.end_streams()
    source = stream_reader()
    source.feed_data(b"data: {}\n\n")
    with lifecycle.relaying(source), pytest.raises(EndedByShutdown):
        await source.readany()


async def test_a_stream_done_before_the_end_is_left_alone() -> None:
    lifecycle = Lifecycle()
    source = stream_reader()
    with lifecycle.relaying(source):
        pass
    lifecycle.end_streams()
    source.feed_data(b"data: {}\n\n")
    assert await source.readany() == b"data: {}\n\n"
