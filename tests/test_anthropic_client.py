"""The official anthropic client on vLLM's Messages API through the proxy: streams, messages
and errors as without it, and the meters count them as vLLM does."""

from __future__ import annotations

import logging

import anthropic
import pytest
from anthropic.types import Message, MessageParam

from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

MESSAGES: list[MessageParam] = [{"role": "user", "content": "a secret prompt"}]


def client_for(stack: Stack) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=str(stack.client.make_url("")), api_key="sk-secret-key", max_retries=0
    )


async def read_stream(client: anthropic.AsyncAnthropic) -> tuple[str, Message]:
    """A streamed message's text and the message it adds up to."""
    async with client.messages.stream(model="m", max_tokens=16, messages=MESSAGES) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        return text, await stream.get_final_message()


async def test_streamed_message(stack: Stack) -> None:
    async with client_for(stack) as client:
        text, final = await read_stream(client)
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 5)
    assert final.stop_reason == "end_turn"
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 1
    assert await stack.gauges() == (0, 0)


async def test_message_not_streamed(stack: Stack) -> None:
    async with client_for(stack) as client:
        message = await client.messages.create(
            model="m",
            max_tokens=16,
            messages=MESSAGES,
            extra_headers={BEHAVIOR_HEADER: '{"finish_reason": "length"}'},
        )
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 5)
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="length") == 1


async def test_raw_stream_events_arrive_in_order(stack: Stack) -> None:
    async with client_for(stack) as client:
        stream = await client.messages.create(
            model="m", max_tokens=16, messages=MESSAGES, stream=True
        )
        kinds = [event.type async for event in stream]
    assert kinds == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert await stack.value("vllm:generation_tokens_total") == 5


async def test_upstream_refusal_reaches_the_client(stack: Stack) -> None:
    async with client_for(stack) as client:
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(
                model="m",
                max_tokens=16,
                messages=MESSAGES,
                extra_headers={BEHAVIOR_HEADER: '{"status": 429}'},
            )
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 0


async def test_upstream_error_event_raises(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(error_after=2))
    async with client_for(stack) as client:
        with pytest.raises(anthropic.APIStatusError, match="fake engine failure"):
            await read_stream(client)
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.gauges() == (0, 0)


@pytest.mark.parametrize("behavior", [Behavior(reset_after=2), Behavior(stall_after=2)])
async def test_a_stream_the_proxy_breaks_off_raises(
    make_stack: StackFactory, behavior: Behavior
) -> None:
    # The upstream dies, or goes silent past the read timeout: the proxy's error event is one
    # this client reads, not a stream that just stops short.
    stack = await make_stack(behavior, read_timeout=0.2)
    async with client_for(stack) as client:
        with pytest.raises(anthropic.APIStatusError, match="upstream_error"):
            await read_stream(client)
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1


async def test_one_info_line_per_request_without_secrets(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    async with client_for(stack) as client:
        await read_stream(client)
    lines = [r.getMessage() for r in caplog.records if r.name == "metrics_proxy"]
    assert len(lines) == 1
    for field in ("POST /v1/messages", "status=200", "prompt_tokens=7", "generation_tokens=5"):
        assert field in lines[0]
    for secret in ("a secret prompt", "sk-secret-key", "tok0"):
        assert secret not in caplog.text
