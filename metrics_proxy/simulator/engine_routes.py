"""The simulator's pooling routes and vLLM's other engine routes. A JSON answer comes once
the request is done, after `ttft`; it is written in `split`-byte pieces, and `reset_after` /
`stall_after` count those pieces. The streams (tokens in and out, Cohere's chat) take the
knobs as chat's stream does."""

from __future__ import annotations

from aiohttp import web

from metrics_proxy.simulator.answers import bad_request, event_stream, json_answer, read_request
from metrics_proxy.simulator.cohere_shapes import cohere_body, cohere_steps
from metrics_proxy.simulator.engine_shapes import (
    decisions_body,
    generative_scoring_body,
    pooling_body,
    token_steps,
    tokens_body,
)
from metrics_proxy.simulator.openai_routes import INVOKED_CHAT, generate
from metrics_proxy.simulator.openai_shapes import completion_body
from metrics_proxy.simulator.request_fields import invoked_pooling_path, usage_options, vllm_bool
from metrics_proxy.simulator.state import SIMULATION


async def pooling(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await read_request(request)
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    path = request.path
    if path == "/invocations":
        path = invoked_pooling_path(body)
    return await json_answer(request, b, lambda: pooling_body(path, body, b))


async def invocations(request: web.Request) -> web.StreamResponse:
    """SageMaker's route: chat, completions or pooling, by what the body holds."""
    try:
        _, body = await read_request(request)
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    if isinstance(body.get("messages"), list):
        request[INVOKED_CHAT] = True
        return await generate(request)
    if body.get("prompt") is not None or body.get("prompt_embeds") is not None:
        return await generate(request)
    return await pooling(request)


async def chat_batch(request: web.Request) -> web.StreamResponse:
    """Several conversations in one request, one choice each; never streamed."""
    try:
        b, body = await read_request(request)
        if vllm_bool(body, "stream"):
            raise ValueError("Streaming is not supported for batch chat completions")
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    messages, model = body.get("messages"), str(body["model"])
    conversations = len(messages) if isinstance(messages, list) else 1
    return await json_answer(request, b, lambda: completion_body(True, model, conversations, b))


async def decisions(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await read_request(request)
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    return await json_answer(request, b, lambda: decisions_body(body, b))


async def generative_scoring(request: web.Request) -> web.StreamResponse:
    try:
        b, body = await read_request(request)
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    return await json_answer(request, b, lambda: generative_scoring_body(body, b))


async def generate_tokens(request: web.Request) -> web.StreamResponse:
    """Tokens in, tokens out: `token_ids` and `sampling_params`, OpenAI's stream options."""
    try:
        b, body = await read_request(request)
        params = body.get("sampling_params")
        if not isinstance(params, dict) or not isinstance(body.get("token_ids"), list):
            raise ValueError("token_ids and sampling_params are required")
        stream = vllm_bool(body, "stream")
        usage_options(body)
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    n = int(params.get("n") or 1)
    if not stream:
        return await json_answer(request, b, lambda: tokens_body(n, b))
    resp = web.StreamResponse()
    with request.app[SIMULATION].serving():
        await event_stream(request, resp, b, token_steps(body, b, n))
    return resp


async def cohere_chat(request: web.Request) -> web.StreamResponse:
    """Cohere's v2 chat: its typed events when streamed, its answer object when not."""
    try:
        b, body = await read_request(request)
        stream = vllm_bool(body, "stream")
    except (ValueError, TypeError) as exc:
        return bad_request(exc)
    if not stream:
        return await json_answer(request, b, lambda: cohere_body(b))
    resp = web.StreamResponse()
    with request.app[SIMULATION].serving():
        await event_stream(request, resp, b, cohere_steps(b))
    return resp
