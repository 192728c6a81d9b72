"""`python -m metrics_proxy.simulate`: the simulated vLLM in its own process, as a user meets
it, with the official openai client against it, streaming and not."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from tests.support.fake_upstream import FAKE_STATE, make_fake_upstream
from tests.support.processes import environ_without_settings, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
FAST = ("--ttft", "0.01", "--itl", "0.002", "--output-tokens", "12")
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [
    {"role": "user", "content": "Say something, anything."}
]


@asynccontextmanager
async def simulator(*args: str) -> AsyncIterator[str]:
    """The command serving on a free loopback port until the block ends, then SIGINT: it
    must stop cleanly, having said at WARNING that its answers are simulated."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "metrics_proxy.simulate", "--port", str(port), *args,
        cwd=ROOT, env=environ_without_settings(), stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_serving(url, process, "/health")
        yield url
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGINT)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"WARNING metrics_proxy.simulator: simulated vLLM serving model" in stderr
    assert b"its answers are SIMULATED" in stderr


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


async def test_the_openai_client_streams_a_chat_from_it() -> None:
    async with simulator(*FAST, "--model-name", "sim-model") as url, client(url) as openai_client:
        stream = await openai_client.chat.completions.create(
            model="sim-model", messages=MESSAGES, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    pieces = [c.choices[0].delta.content for c in chunks if c.choices]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    usage = chunks[-1].usage
    assert usage is not None
    assert pieces[0] == ""  # the role chunk, as vLLM sends it
    assert len(pieces) - 1 == usage.completion_tokens > 0  # one chunk a token
    assert finishes[-1] in ("stop", "length")
    assert set(finishes[:-1]) == {None}
    assert usage.prompt_tokens > 0
    assert {c.model for c in chunks} == {"sim-model"}


async def test_the_openai_client_gets_whole_answers_from_it() -> None:
    async with simulator(*FAST) as url, client(url) as openai_client:
        chat = await openai_client.chat.completions.create(model="my-model", messages=MESSAGES)
        cut = await openai_client.completions.create(model="my-model", prompt="Hi", max_tokens=3)
    assert chat.usage is not None
    assert chat.choices[0].message.content is not None
    assert len(chat.choices[0].message.content.split()) == chat.usage.completion_tokens > 0
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert cut.choices[0].finish_reason == "length"  # max_tokens cut it, as vLLM says
    assert cut.usage is not None
    assert cut.usage.completion_tokens == 3


async def test_it_refuses_what_vllm_refuses_and_fails_at_the_rate_asked() -> None:
    async with simulator(*FAST, "--error-rate", "1") as url, client(url) as openai_client:
        with pytest.raises(openai.NotFoundError, match="The model `gpt-4` does not exist"):
            await openai_client.chat.completions.create(model="gpt-4", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError, match="maximum context length is 8192"):
            await openai_client.completions.create(model="my-model", prompt="x", max_tokens=9000)
        with pytest.raises(openai.InternalServerError):
            await openai_client.chat.completions.create(model="my-model", messages=MESSAGES)


async def test_a_request_with_a_seed_gets_the_same_answer_again() -> None:
    async with simulator(*FAST) as url, client(url) as openai_client:
        answers = [
            await openai_client.chat.completions.create(
                model="my-model", messages=MESSAGES, seed=1234
            )
            for _ in range(2)
        ]
    first, again = (a.model_dump(exclude={"id", "created"}) for a in answers)
    assert first == again


async def test_its_background_traffic_reaches_the_url_asked(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    # The tests' fake stands where a proxy would be, and records what the traffic sends.
    fake = await aiohttp_server(make_fake_upstream())
    target = str(fake.make_url("")).rstrip("/")
    async with simulator("--traffic", "50", "--traffic-url", target, "--model-name", "sim"):
        received = await fake.app[FAKE_STATE].wait_for_requests(5, timeout=10)
    assert {r.path for r in received} <= {"/v1/chat/completions", "/v1/completions"}
    bodies = [orjson.loads(r.body) for r in received]
    assert {body["model"] for body in bodies} == {"sim"}


def test_help_lists_the_knobs_and_a_bad_one_is_one_line() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metrics_proxy.simulate", *args], cwd=ROOT,
            env=environ_without_settings(), capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip

    shown = run("--help")
    assert shown.returncode == 0
    for flag in ("--ttft", "--itl", "--output-tokens", "--spread", "--error-rate", "--traffic"):
        assert flag in shown.stdout
    refused = run("--error-rate", "2")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "python -m metrics_proxy.simulate: error: argument --error-rate: '2' is not between 0 and 1"
    ]
