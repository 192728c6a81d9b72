"""The official openai client through the proxy: streams, bodies and errors as without it."""

from __future__ import annotations

import logging

import openai
import pytest

from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.stack import Stack, StackFactory

MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "a secret prompt"}
]


def client_for(stack: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(stack.client.make_url("/v1")), api_key="sk-secret-key", max_retries=0
    )


async def test_streaming_chat(stack: Stack) -> None:
    async with client_for(stack) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1


async def test_streaming_chat_with_usage_requested(stack: Stack) -> None:
    async with client_for(stack) as client:
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        usage = [c.usage async for c in stream if c.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens) for u in usage] == [(7, 5)]


async def test_non_streaming_chat_and_completions(stack: Stack) -> None:
    async with client_for(stack) as client:
        chat = await client.chat.completions.create(model="m", messages=MESSAGES)
        completion = await client.completions.create(model="m", prompt="hi", max_tokens=5)
    assert chat.usage is not None
    assert chat.usage.completion_tokens == 5
    assert completion.choices[0].text == "tok0 tok1 tok2 tok3 tok4 "
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 2


async def test_upstream_error_status_reaches_the_client(stack: Stack) -> None:
    async with client_for(stack) as client:
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="m", messages=MESSAGES, extra_headers={BEHAVIOR_HEADER: '{"status": 429}'}
            )


async def test_upstream_dying_mid_stream_raises_api_error(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(reset_after=2))
    async with client_for(stack) as client:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            async for _ in stream:
                pass
    assert await stack.gauges() == (0, 0)


async def test_unreachable_upstream_is_a_502_for_the_client(make_stack: StackFactory) -> None:
    stack = await make_stack(upstream_url="http://127.0.0.1:9")
    async with client_for(stack) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.status_code == 502


async def test_one_info_line_per_request_without_secrets(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="metrics_proxy")
    async with client_for(stack) as client:
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"X-Request-Id": "r-1"}
        )
        async for _ in stream:
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "metrics_proxy"]
    assert len(lines) == 1
    (line,) = lines
    for field in (
        "POST /v1/chat/completions",
        "status=200",
        "finished_reason=stop",
        "queue_ms=",
        "inference_ms=",
        "ttft_ms=",
        "e2e_ms=",
        "prompt_tokens=7",
        "generation_tokens=5",
        "request_id=r-1",
    ):
        assert field in line
    for secret in ("a secret prompt", "sk-secret-key", "tok0"):
        assert secret not in caplog.text
