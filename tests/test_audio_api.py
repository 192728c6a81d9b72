"""The audio routes through the proxy: the form streams upstream as it arrives (the proxy adds
a usage field at its end when it needs one), the client gets the upstream's bytes, and the
metrics count what the upstream reported, never a duration turned into tokens."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.fake_upstream import BEHAVIOR_HEADER, Behavior
from tests.support.raw_peers import read_message
from tests.support.stack import Stack, StackFactory

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
ROUTES = [TRANSCRIPTIONS, TRANSLATIONS]
BOUNDARY = b"----audio-form-b0undary"
CONTENT_TYPE = "multipart/form-data; boundary=" + BOUNDARY.decode()
FORM = {"Content-Type": CONTENT_TYPE}
CLOSE = b"\r\n--" + BOUNDARY + b"--\r\n"
# Audio with every byte value in it (bytes that are almost a delimiter: test_multipart_scan).
AUDIO = bytes(range(256)) * 64
ServerFactory = Callable[..., Awaitable[TestServer]]


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = b"Content-Disposition: " + disposition.encode()
    return b"--" + BOUNDARY + b"\r\n" + head + b"\r\n\r\n" + value + b"\r\n"


def audio_form(*fields: tuple[str, str], fields_first: bool = False, audio: bytes = AUDIO) -> bytes:
    """A form as clients send it: the file, and fields before or after it."""
    file = part("file", audio, "speech.wav")
    small = [part(name, value.encode()) for name, value in fields]
    parts = [*small, file] if fields_first else [file, *small]
    return b"".join(parts) + CLOSE.removeprefix(b"\r\n")


def with_fields(body: bytes, *fields: tuple[str, str]) -> bytes:
    """The form as the proxy sends it upstream: these fields added in front of its end."""
    added = b"".join(
        b"\r\n" + part(name, value.encode()).removesuffix(b"\r\n") for name, value in fields
    )
    return body.removesuffix(CLOSE) + added + CLOSE


async def proxied(stack: Stack, path: str, body: bytes, behavior: str = "{}") -> bytes:
    headers = {**FORM, BEHAVIOR_HEADER: behavior}
    response = await stack.client.post(path, data=body, headers=headers)
    assert response.status == 200
    return await response.read()


async def direct(stack: Stack, path: str, body: bytes, behavior: str = "{}") -> tuple[int, bytes]:
    """What a client of the upstream itself gets for the same request."""
    async with aiohttp.ClientSession() as session:
        headers = {**FORM, BEHAVIOR_HEADER: behavior}
        async with session.post(
            stack.upstream.make_url(path), data=body, headers=headers
        ) as response:
            return response.status, await response.read()


def events(body: bytes) -> list[Any]:
    datas = [block.removeprefix(b"data: ") for block in body.split(b"\n\n") if block]
    return [data.decode() if data == b"[DONE]" else orjson.loads(data) for data in datas]


async def assert_exact(stack: Stack, path: str, *, prompt: int = 7, generated: int = 5) -> None:
    assert await stack.value("vllm:prompt_tokens_total") == prompt
    assert await stack.value("vllm:generation_tokens_total") == generated
    assert await stack.value("proxy_estimated_token_counts_total") == 0
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 1
    assert (await stack.value("vllm:e2e_request_latency_seconds"))["count"] == 1
    assert await stack.value("http_requests_total", handler=path, status="2xx") == 1
    assert await stack.gauges() == (0, 0)


async def test_the_fake_answers_in_vllms_shapes(stack: Stack) -> None:
    status, body = await direct(stack, TRANSCRIPTIONS, audio_form(("stream", "true")))
    assert status == 200
    chunks = events(body)
    assert chunks[0] == {
        "id": "trsc-fake",
        "object": "transcription.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "choices": [{"delta": {"content": "tok0 "}}],
    }
    assert chunks[4]["choices"] == [
        {"delta": {"content": "tok4 "}, "finish_reason": "stop", "stop_reason": None}
    ]
    assert chunks[5] == "[DONE]"
    with_usage = audio_form(("stream", "true"), ("stream_include_usage", "true"))
    _, body = await direct(stack, TRANSLATIONS, with_usage)
    usage_chunk = events(body)[-2]
    assert (usage_chunk["object"], usage_chunk["choices"]) == ("translation.chunk", [])
    assert usage_chunk["usage"] == {"prompt_tokens": 7, "total_tokens": 12, "completion_tokens": 5}
    _, body = await direct(stack, TRANSCRIPTIONS, audio_form())
    assert orjson.loads(body) == {
        "text": "tok0 tok1 tok2 tok3 tok4 ",
        "usage": {"type": "duration", "seconds": 3},
    }
    _, body = await direct(stack, TRANSLATIONS, audio_form())
    assert orjson.loads(body) == {"text": "tok0 tok1 tok2 tok3 tok4 "}
    status, _ = await direct(stack, TRANSCRIPTIONS, audio_form(("stream_include_usage", "1")))
    assert status == 400


@pytest.mark.parametrize("fields_first", [True, False], ids=["fields-first", "file-first"])
@pytest.mark.parametrize("path", ROUTES)
async def test_a_stream_is_counted_exactly_and_reaches_the_client_unchanged(
    stack: Stack, path: str, fields_first: bool
) -> None:
    body = audio_form(("model", "whisper"), ("stream", "true"), fields_first=fields_first)
    through = await proxied(stack, path, body)
    assert through == (await direct(stack, path, body))[1]
    assert "usage" not in through.decode()
    sent = stack.state.requests[0]
    assert sent.body == with_fields(body, ("stream_include_usage", "true"))
    assert sent.headers["Transfer-Encoding"] == "chunked"  # a body that may grow
    await assert_exact(stack, path)


@pytest.mark.parametrize(
    "behavior", ['{"split": 1}', '{"split": 7}', '{"crlf": true, "keepalive": true, "split": 3}']
)
async def test_how_the_upstream_frames_its_events_changes_nothing(
    stack: Stack, behavior: str
) -> None:
    body = audio_form(("stream", "true"))
    through = await proxied(stack, TRANSCRIPTIONS, body, behavior)
    assert through == (await direct(stack, TRANSCRIPTIONS, body, behavior))[1]
    await assert_exact(stack, TRANSCRIPTIONS)


async def test_a_client_that_asked_for_usage_gets_it_and_its_form_goes_unchanged(
    stack: Stack,
) -> None:
    body = audio_form(("stream", "true"), ("stream_include_usage", "true"))
    through = await proxied(stack, TRANSCRIPTIONS, body)
    assert through == (await direct(stack, TRANSCRIPTIONS, body))[1]
    assert events(through)[-2]["usage"] == {
        "prompt_tokens": 7,
        "total_tokens": 12,
        "completion_tokens": 5,
    }
    assert stack.state.requests[0].body == body
    await assert_exact(stack, TRANSCRIPTIONS)


@pytest.mark.parametrize("word", ["True", "1", "yes", "ON", "t"])
async def test_stream_is_read_as_vllm_reads_a_boolean(stack: Stack, word: str) -> None:
    body = audio_form(("stream", word))
    through = await proxied(stack, TRANSLATIONS, body)
    assert through == (await direct(stack, TRANSLATIONS, body))[1]
    assert stack.state.requests[0].body == with_fields(body, ("stream_include_usage", "true"))
    await assert_exact(stack, TRANSLATIONS)


async def test_continuous_usage_is_asked_for_and_hidden(make_stack: StackFactory) -> None:
    stack = await make_stack(stream_usage="continuous")
    body = audio_form(("stream", "1"))
    through = await proxied(stack, TRANSCRIPTIONS, body, '{"itl": 0.001}')
    assert through == (await direct(stack, TRANSCRIPTIONS, body))[1]
    added = (("stream_include_usage", "true"), ("stream_continuous_usage_stats", "true"))
    assert stack.state.requests[0].body == with_fields(body, *added)
    await assert_exact(stack, TRANSCRIPTIONS)
    assert (await stack.value("vllm:inter_token_latency_seconds"))["count"] == 4


async def test_with_stream_usage_none_nothing_is_added_and_chunks_are_counted(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(stream_usage="none")
    body = audio_form(("stream", "true"))
    await proxied(stack, TRANSCRIPTIONS, body)
    sent = stack.state.requests[0]
    assert sent.body == body
    assert sent.headers["Content-Length"] == str(len(body))  # the client's framing, kept
    assert await stack.value("vllm:generation_tokens_total") == 5
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert await stack.value("proxy_estimated_token_counts_total") == 1


@pytest.mark.parametrize("path", ROUTES)
async def test_a_non_streamed_answer_reports_no_tokens_and_none_are_invented(
    stack: Stack, path: str
) -> None:
    body = audio_form(("model", "whisper"), ("max_completion_tokens", "64"))
    through = await proxied(stack, path, body)
    assert through == (await direct(stack, path, body))[1]
    if path == TRANSCRIPTIONS:
        assert orjson.loads(through)["usage"] == {"type": "duration", "seconds": 3}
    assert stack.state.requests[0].body == body
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert await stack.value("vllm:generation_tokens_total") == 0
    assert await stack.value("proxy_estimated_token_counts_total") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    max_tokens = await stack.value("vllm:request_params_max_tokens")
    assert (max_tokens["count"], max_tokens["sum"]) == (1, 64)
    assert (await stack.value("vllm:time_to_first_token_seconds"))["count"] == 0
    assert await stack.gauges() == (0, 0)


async def test_a_large_verbose_answer_still_reads_as_no_usage(make_stack: StackFactory) -> None:
    # verbose_json: past the size decoded whole, token ids in every segment, a duration.
    segment = {"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": "usage", "tokens": [1] * 50}
    answer: dict[str, Any] = {"duration": "600.0", "language": "en", "segments": [segment] * 400}
    answer["usage"] = {"type": "duration", "seconds": 600}
    raw = orjson.dumps(answer)
    assert len(raw) > 64 * 1024
    stack = await make_stack(Behavior(raw_body=raw))
    assert await proxied(stack, TRANSCRIPTIONS, audio_form()) == raw
    assert await stack.value("vllm:prompt_tokens_total") == 0
    assert await stack.value("vllm:generation_tokens_total") == 0
    assert await stack.value("proxy_estimated_token_counts_total") == 1


async def test_a_length_finish_is_counted_as_vllm_counts_it(stack: Stack) -> None:
    body = audio_form(("stream", "true"))
    await proxied(
        stack, TRANSCRIPTIONS, body, '{"finish_reason": "length", "completion_tokens": 3}'
    )
    assert await stack.value("vllm:request_success_total", finished_reason="length") == 1
    assert await stack.value("vllm:generation_tokens_total") == 3


@pytest.mark.parametrize(
    "fields",
    [
        (("stream_include_usage", "true"),),  # stream options without stream: vLLM's 400
        (("stream", "maybe"),),  # no boolean
        (("stream", "true"), ("stream_include_usage", "perhaps")),
    ],
    ids=["options-without-stream", "bad-stream", "bad-option"],
)
async def test_a_form_vllm_refuses_goes_as_it_is_and_counts_as_no_request(
    stack: Stack, fields: tuple[tuple[str, str], ...]
) -> None:
    body = audio_form(*fields)
    response = await stack.client.post(TRANSCRIPTIONS, data=body, headers=FORM)
    assert (response.status, await response.read()) == await direct(stack, TRANSCRIPTIONS, body)
    assert response.status == 400
    assert stack.state.requests[0].body == body
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1
    for reason in ("stop", "error", "abort"):
        assert await stack.value("vllm:request_success_total", finished_reason=reason) == 0
    assert await stack.value("http_requests_total", handler=TRANSCRIPTIONS, status="4xx") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_body_that_is_no_form_passes_untouched(stack: Stack) -> None:
    body = orjson.dumps({"model": "m", "stream": True})
    response = await stack.client.post(
        TRANSCRIPTIONS, data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    assert stack.state.requests[0].body == body
    assert await stack.value("proxy_errors_total", kind="upstream_status") == 1


async def test_the_audio_goes_upstream_as_it_arrives(
    make_stack: StackFactory, aiohttp_server: ServerFactory
) -> None:
    first_bytes_in = asyncio.Event()
    received = bytearray()

    async def transcribe(request: web.Request) -> web.Response:
        received.extend(await request.content.readany())
        first_bytes_in.set()
        received.extend(await request.content.read())
        return web.json_response({"text": "hi", "usage": {"type": "duration", "seconds": 1}})

    app = web.Application()
    app.router.add_post(TRANSCRIPTIONS, transcribe)
    upstream = await aiohttp_server(app)
    stack = await make_stack(upstream_url=str(upstream.make_url("")))
    body = audio_form(("stream", "false"), audio=os.urandom(3 * 1024 * 1024))

    async def upload() -> AsyncIterator[bytes]:
        yield body[:1000]
        async with asyncio.timeout(5):  # never over if the proxy waited for the whole body
            await first_bytes_in.wait()
        for start in range(1000, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    response = await stack.client.post(TRANSCRIPTIONS, data=upload(), headers=FORM)
    assert response.status == 200
    assert bytes(received) == body
    assert await stack.value("vllm:request_success_total", finished_reason="stop") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_form_longer_than_the_limit_by_its_length_never_goes_upstream(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(max_body_size=len(AUDIO))
    response = await stack.client.post(TRANSCRIPTIONS, data=audio_form(), headers=FORM)
    assert response.status == 413
    assert orjson.loads(await response.read())["error"]["code"] == 413
    assert stack.state.requests == []
    assert await stack.value("proxy_errors_total", kind="body_too_large") == 1
    # Refused on its headers: it never took a place in the queue.
    assert (await stack.value("vllm:request_queue_time_seconds"))["count"] == 0
    assert await stack.gauges() == (0, 0)


async def test_a_chunked_form_that_grows_past_the_limit_is_stopped(
    make_stack: StackFactory,
) -> None:
    stack = await make_stack(max_body_size=4 * len(AUDIO))
    body = audio_form(audio=AUDIO * 8)

    async def upload() -> AsyncIterator[bytes]:
        for start in range(0, len(body), len(AUDIO)):
            yield body[start : start + len(AUDIO)]

    response = await stack.client.post(TRANSCRIPTIONS, data=upload(), headers=FORM)
    assert response.status == 413
    assert orjson.loads(await response.read())["error"]["code"] == 413
    assert await stack.value("proxy_errors_total", kind="body_too_large") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 0
    assert stack.state.requests == []  # the upstream never had a whole form
    assert await stack.gauges() == (0, 0)


async def test_a_form_that_stalls_gets_408(make_stack: StackFactory) -> None:
    stack = await make_stack(client_timeout=0.3)
    body = audio_form(("stream", "true"))
    head = (
        f"POST {TRANSCRIPTIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    try:
        writer.write(head + body[:1000])  # the rest never comes
        async with asyncio.timeout(10):
            answer = await read_message(reader)
    finally:
        writer.close()
    assert answer.status == 408
    assert orjson.loads(answer.body)["error"]["code"] == 408
    assert answer.headers["Connection"] == "close"
    assert await stack.value("proxy_errors_total", kind="client_timeout") == 1
    # It held its place in the queue while its body came and gave it back; vLLM never ran it,
    # so, as vLLM observes queue time at a request's finish, none is observed.
    assert (await stack.value("vllm:request_queue_time_seconds"))["count"] == 0
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 0
    assert await stack.value("http_requests_total", handler=TRANSCRIPTIONS, status="4xx") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_client_leaving_mid_upload_is_no_engine_request(stack: Stack) -> None:
    body = audio_form(("stream", "true"))
    head = (
        f"POST {TRANSCRIPTIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    writer.write(head + body[:1000])
    await writer.drain()
    await stack.wait_for("vllm:num_requests_running", 1)  # its slot is held while it uploads
    writer.close()
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="before_headers")
    # vLLM's engine never sees a form that never arrived whole.
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 0
    assert await stack.gauges() == (0, 0)
    assert stack.state.requests == []


async def test_a_compressed_form_gets_415(stack: Stack) -> None:
    headers = {**FORM, "Content-Encoding": "gzip"}
    response = await stack.client.post(TRANSCRIPTIONS, data=b"\x1f\x8b", headers=headers)
    assert response.status == 415
    assert stack.state.requests == []
    assert await stack.value("proxy_errors_total", kind="bad_request") == 1


async def test_a_client_leaving_mid_stream_is_an_abort(make_stack: StackFactory) -> None:
    stack = await make_stack(Behavior(stall_after=2))
    response = await stack.client.post(
        TRANSCRIPTIONS, data=audio_form(("stream", "true")), headers=FORM
    )
    seen = b""
    async with asyncio.timeout(5):
        while seen.count(b"tok") < 2:
            piece = await response.content.readany()
            assert piece, seen  # the stream goes on until the client leaves
            seen += piece
    response.close()
    await stack.state.wait_for_closed(1)
    await stack.wait_for("proxy_client_disconnects_total", 1, stage="streaming")
    assert await stack.value("vllm:request_success_total", finished_reason="abort") == 1
    assert await stack.value("vllm:generation_tokens_total") == 2
    assert await stack.gauges() == (0, 0)


async def test_an_upstream_dying_mid_stream_ends_it_with_an_error_event(stack: Stack) -> None:
    body = audio_form(("stream", "true"))
    through = await proxied(stack, TRANSLATIONS, body, '{"reset_after": 3}')
    assert through.count(b'"content":"tok') == 3
    assert events(through)[-1]["error"]["type"] == "upstream_error"
    assert await stack.value("proxy_errors_total", kind="upstream_disconnect") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.value("vllm:generation_tokens_total") == 3
    assert await stack.gauges() == (0, 0)


async def test_an_error_event_from_the_upstream_counts_as_an_error(stack: Stack) -> None:
    chunk = {"id": "trsc-1", "object": "transcription.chunk", "created": 1, "model": "m"}
    stream = (
        b"data: " + orjson.dumps({**chunk, "choices": [{"delta": {"content": "hi"}}]}) + b"\n\n"
        b'data: {"error": {"message": "engine died", "type": "InternalServerError"}}\n\n'
        b"data: [DONE]\n\n"
    )
    behavior = orjson.dumps({"raw_body": stream.decode()}).decode()
    body = audio_form(("stream", "true"), ("stream_include_usage", "true"))
    assert await proxied(stack, TRANSCRIPTIONS, body, behavior) == stream
    assert await stack.value("proxy_errors_total", kind="upstream_stream_error") == 1
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.gauges() == (0, 0)


async def test_an_upstream_5xx_passes_and_counts_as_an_error(stack: Stack) -> None:
    body = audio_form(("stream", "true"))
    response = await stack.client.post(
        TRANSCRIPTIONS, data=body, headers={**FORM, BEHAVIOR_HEADER: '{"status": 503}'}
    )
    assert response.status == 503
    assert (response.status, await response.read()) == await direct(
        stack, TRANSCRIPTIONS, body, '{"status": 503}'
    )
    assert await stack.value("vllm:request_success_total", finished_reason="error") == 1
    assert await stack.gauges() == (0, 0)


async def test_a_form_trickled_to_keep_its_slot_gets_408_in_time(make_stack: StackFactory) -> None:
    # Each piece comes within --client-timeout, but not the whole form: a form holds its
    # concurrency slot while it comes, so it gets --client-timeout for all of it.
    stack = await make_stack(client_timeout=0.5, max_concurrency=1)
    body = audio_form(("stream", "true"))
    head = (
        f"POST {TRANSCRIPTIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: {CONTENT_TYPE}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.client.port)
    try:
        writer.write(head + body[:100])
        async with asyncio.timeout(10):
            answer = asyncio.ensure_future(read_message(reader))
            for offset in range(100, 120):  # a byte every 0.3 s: under the per-piece limit
                done, _ = await asyncio.wait({answer}, timeout=0.3)
                if done:
                    break
                writer.write(body[offset : offset + 1])
            message = await answer
    finally:
        writer.close()
    assert message.status == 408
    assert offset < 110  # ended within about 0.5 s, not when the trickle stopped
    assert await stack.gauges() == (0, 0)
