"""However a client spells `stream` and `stream_options`, it gets through the proxy exactly the
usage vLLM would send it, and the proxy counts every token: the flags are read as vLLM reads
them (pydantic's lax booleans), and a request vLLM refuses reaches it untouched."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson
import pytest

from tests.support.fake_upstream import Behavior
from tests.support.stack import Stack, StackFactory

CHAT = "/v1/chat/completions"

# What vLLM answers: a stream without usage, with a final usage-only chunk, with usage in
# every chunk as well; a JSON completion (not streamed); a 400 (a value it refuses).
NONE, FINAL, EVERY, JSON, REFUSED = "none", "final", "every", "json", "refused"


def streamed(options: object) -> dict[str, Any]:
    return {"stream": True, "stream_options": options}


CASES: list[tuple[dict[str, Any], str]] = [
    ({"stream": True}, NONE),
    (streamed({}), NONE),
    (streamed(None), NONE),
    (streamed({"include_usage": 0}), NONE),
    (streamed({"include_usage": False}), NONE),
    (streamed({"include_usage": "false"}), NONE),
    (streamed({"include_usage": "Off"}), NONE),
    (streamed({"include_usage": None}), NONE),
    (streamed({"continuous_usage_stats": True}), NONE),  # only counts with include_usage
    (streamed({"include_usage": "no", "continuous_usage_stats": "yes"}), NONE),
    ({"stream": "true"}, NONE),
    ({"stream": 1}, NONE),
    ({"stream": "YES", "stream_options": {}}, NONE),
    (streamed({"include_usage": True}), FINAL),
    (streamed({"include_usage": "true"}), FINAL),
    (streamed({"include_usage": 1}), FINAL),
    (streamed({"include_usage": "1"}), FINAL),
    (streamed({"include_usage": "yes"}), FINAL),
    (streamed({"include_usage": "TRUE"}), FINAL),
    (streamed({"include_usage": 1.0}), FINAL),
    (streamed({"include_usage": True, "continuous_usage_stats": None}), FINAL),
    (streamed({"include_usage": "true", "continuous_usage_stats": 0}), FINAL),
    ({"stream": "on", "stream_options": {"include_usage": "y"}}, FINAL),
    (streamed({"include_usage": True, "continuous_usage_stats": True}), EVERY),
    (streamed({"include_usage": "on", "continuous_usage_stats": "t"}), EVERY),
    (streamed({"include_usage": 1, "continuous_usage_stats": "1"}), EVERY),
    ({"stream": False}, JSON),
    ({"stream": 0}, JSON),
    ({"stream": "false"}, JSON),
    ({"stream": "N"}, JSON),
    ({"stream": None}, JSON),
    (streamed({"include_usage": 2}), REFUSED),
    (streamed({"include_usage": "maybe"}), REFUSED),
    (streamed({"include_usage": " true"}), REFUSED),
    (streamed({"include_usage": []}), REFUSED),
    (streamed({"include_usage": {}}), REFUSED),
    (streamed({"include_usage": True, "continuous_usage_stats": "sometimes"}), REFUSED),
    (streamed({"continuous_usage_stats": 2}), REFUSED),
    (streamed("yes"), REFUSED),
    (streamed([]), REFUSED),
    (streamed(True), REFUSED),
    ({"stream": "maybe"}, REFUSED),
    ({"stream": 2, "stream_options": {"include_usage": True}}, REFUSED),
]


async def answer(session: aiohttp.ClientSession, url: Any, body: bytes) -> tuple[int, bytes]:
    async with session.post(url, data=body) as response:
        return response.status, await response.read()


def usage_shape(status: int, raw: bytes) -> str:
    """Which of the answers above `raw` is."""
    if status == 400:
        assert orjson.loads(raw)["error"]["code"] == 400
        return REFUSED
    assert status == 200
    if not raw.startswith(b"data: "):
        assert "usage" in orjson.loads(raw)
        return JSON
    events = raw.removesuffix(b"\n\n").split(b"\n\n")
    assert events.pop() == b"data: [DONE]"
    chunks = [orjson.loads(event.removeprefix(b"data: ")) for event in events]
    final = [chunk for chunk in chunks if not chunk["choices"]]
    with_choices = [chunk for chunk in chunks if chunk["choices"]]
    every = [chunk for chunk in with_choices if "usage" in chunk]
    assert final == chunks[len(with_choices) :]  # a usage-only chunk comes last, if at all
    assert len(final) <= 1
    assert len(every) in (0, len(with_choices))  # per-chunk usage is on every chunk or none
    if every:
        assert final
        return EVERY
    return FINAL if final else NONE


@pytest.mark.parametrize("stream_usage", ["include", "continuous"])
@pytest.mark.parametrize(("fields", "expected"), CASES, ids=lambda v: orjson.dumps(v).decode())
async def test_the_client_gets_the_usage_vllm_would_send(
    make_stack: StackFactory, stream_usage: str, fields: dict[str, Any], expected: str
) -> None:
    stack: Stack = await make_stack(stream_usage=stream_usage)
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})
    async with aiohttp.ClientSession() as session:
        through = await answer(session, stack.client.make_url(CHAT), body)
        direct = await answer(session, stack.upstream.make_url(CHAT), body)
    assert through == direct  # status and every byte
    assert usage_shape(*through) == expected
    generated = await stack.value("vllm:generation_tokens_total")
    prompt = await stack.value("vllm:prompt_tokens_total")
    estimated = await stack.value("proxy_estimated_token_counts_total")
    if expected == REFUSED:
        assert stack.state.requests[0].body == body  # vLLM's 400 is about the client's bytes
        assert (prompt, generated, estimated) == (0, 0, 0)
    else:
        assert (prompt, generated, estimated) == (7, 5, 0)
    assert await stack.gauges() == (0, 0)


# Servers that send usage of their own accord: whatever they send that the proxy's request did
# not cause reaches the client as sent, and the counts are exact from it.
SERVER_USAGE = [
    ("finish", "include", {}),  # transformers serve: usage on its finish chunk, no usage chunk
    ("force", "include", {}),  # vLLM --enable-force-include-usage: every chunk, and a usage chunk
    ("finish", "include", {"stream_options": {"include_usage": True}}),
    ("force", "include", {"stream_options": {"include_usage": True}}),
    # (With --stream-usage continuous the proxy itself asks for counts on every chunk, so a
    # server that sends them anyway cannot be told apart: the README says so.)
]


@pytest.mark.parametrize(("server", "stream_usage", "fields"), SERVER_USAGE)
async def test_usage_the_server_sends_anyway_reaches_the_client(
    make_stack: StackFactory, server: str, stream_usage: str, fields: dict[str, Any]
) -> None:
    stack = await make_stack(Behavior(usage=server), stream_usage=stream_usage)
    body = orjson.dumps({"model": "m", "messages": [], "stream": True, **fields})
    async with aiohttp.ClientSession() as session:
        through = await answer(session, stack.client.make_url(CHAT), body)
        direct = await answer(session, stack.upstream.make_url(CHAT), body)
    assert through == direct
    prompt = await stack.value("vllm:prompt_tokens_total")
    generated = await stack.value("vllm:generation_tokens_total")
    assert (prompt, generated) == (7, 5)
    assert await stack.value("proxy_estimated_token_counts_total") == 0


async def test_continuous_mode_keeps_a_finish_chunks_own_usage(make_stack: StackFactory) -> None:
    # The proxy asked for continuous usage; a server that ignores it and puts usage on its
    # finish chunk alone (transformers serve) must still give a client that asked
    # include_usage that usage, where the server put it.
    stack = await make_stack(Behavior(usage="finish"), stream_usage="continuous")
    body = orjson.dumps(
        {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    )
    async with aiohttp.ClientSession() as session:
        through = await answer(session, stack.client.make_url(CHAT), body)
        direct = await answer(session, stack.upstream.make_url(CHAT), body)
    assert through == direct


async def test_duplicate_stream_options_cannot_hide_the_usage(stack: Stack) -> None:
    # JSON parsers keep the last duplicate member: the proxy's own must be the only one.
    body = (
        b'{"model":"m","messages":[],"stream":true,'
        b'"stream_options":{"include_usage":false},"stream_options":{"include_usage":false}}'
    )
    async with aiohttp.ClientSession() as session:
        status, raw = await answer(session, stack.client.make_url(CHAT), body)
    assert status == 200
    assert b'"usage"' not in raw  # the client asked none
    (seen,) = stack.state.requests
    assert seen.body.count(b"stream_options") == 1
    assert await stack.value("vllm:prompt_tokens_total") == 7
    assert await stack.value("proxy_estimated_token_counts_total") == 0


async def test_continuous_mode_still_hides_vllms_counts_on_a_one_chunk_finish(
    make_stack: StackFactory,
) -> None:
    # vLLM with continuous_usage_stats counts on every chunk, the finish chunk included: the
    # chunks before it had counts, so the finish chunk's are the proxy's doing too.
    stack = await make_stack(stream_usage="continuous")
    body = orjson.dumps({"model": "m", "messages": [], "stream": True})
    async with aiohttp.ClientSession() as session:
        through = await answer(session, stack.client.make_url(CHAT), body)
        direct = await answer(session, stack.upstream.make_url(CHAT), body)
    assert through == direct
    assert b'"usage"' not in through[1]


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("split", [0, 1, 9])
async def test_the_fingerprint_the_usage_chunk_took_goes_back_to_the_finish_chunks(
    make_stack: StackFactory, n: int, split: int
) -> None:
    # include_usage moves vLLM's system_fingerprint from each finish chunk to the usage chunk
    # the proxy then drops: a client that did not ask gets it where vLLM would have put it.
    stack = await make_stack(Behavior(system_fingerprint="fp_7", split=split))
    body = orjson.dumps({"model": "m", "messages": [], "stream": True, "n": n})
    async with aiohttp.ClientSession() as session:
        through = await answer(session, stack.client.make_url(CHAT), body)
        direct = await answer(session, stack.upstream.make_url(CHAT), body)
    assert through == direct
    assert through[1].count(b'"system_fingerprint":"fp_7"') == n
    assert await stack.value("vllm:prompt_tokens_total") == 7


async def test_a_finish_chunk_held_back_still_goes_out_when_the_stream_breaks(
    make_stack: StackFactory,
) -> None:
    # The upstream dies between the finish chunk (held for the fingerprint) and the usage
    # chunk: the client still gets the finish chunk, then the error event.
    stack = await make_stack(Behavior(system_fingerprint="fp", completion_tokens=3, reset_after=3))
    body = orjson.dumps({"model": "m", "messages": [], "stream": True})
    async with aiohttp.ClientSession() as session:
        status, raw = await answer(session, stack.client.make_url(CHAT), body)
    assert status == 200
    events = [e for e in raw.split(b"\n\n") if e]
    assert b'"finish_reason":"stop"' in events[-2]
    assert b'"error"' in events[-1]
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
