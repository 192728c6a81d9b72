"""OpenAI's chat and text completions as vLLM writes them: answers, stream chunks, usage and
errors, member for member in vLLM's order (a client, or a test, may compare the bytes)."""

from __future__ import annotations

from typing import Any

import orjson

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.frames import Steps, data_frame
from metrics_proxy.simulator.request_fields import usage_options

CREATED = 1700000000  # a fixed timestamp keeps the output byte-for-byte deterministic
_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError"}
_ERROR_TYPES |= {422: "UnprocessableEntityError", 429: "RateLimitError"}


def usage(p: int, c: int) -> dict[str, int]:
    """vLLM's usage object, in vLLM's member order."""
    return {"prompt_tokens": p, "total_tokens": p + c, "completion_tokens": c}


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def error_body(status: int, message: str) -> bytes:
    """An OpenAI-shape error body, as the openai SDK reads it."""
    return orjson.dumps({"error": {"message": message, "type": error_type(status), "code": status}})


def envelope(
    chat: bool, kind: str, model: str, choices: list[Any], *, answer_id: str | None = None
) -> dict[str, Any]:
    """The members every answer and chunk starts with; ``choices`` last but one, as vLLM."""
    answer_id = answer_id or ("chatcmpl-fake" if chat else "cmpl-fake")
    return {"id": answer_id, "object": kind, "created": CREATED, "model": model, "choices": choices}


def chunk_kind(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def role_choice(index: int) -> dict[str, Any]:
    """A chat stream's first choice: the role, no content yet."""
    delta = {"role": "assistant", "content": ""}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}


def stream_choice(index: int, chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    """One token's choice in a stream: chat's delta, or a completion's text."""
    content: dict[str, Any] = {"delta": {"content": text}} if chat else {"text": text}
    return {"index": index, **content, "logprobs": None, "finish_reason": finish}


def finish_choice(index: int, chat: bool, text: str, finish: str) -> dict[str, Any]:
    """The finishing choice as vLLM writes it after the stop token: ``stop_reason`` too."""
    return stream_choice(index, chat, text, finish) | {"stop_reason": None}


def answer_choice(index: int, chat: bool, text: str, finish: str) -> dict[str, Any]:
    """One choice of a whole (non-streamed) answer."""
    out = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {"index": index, **out, "logprobs": None, "finish_reason": finish}


def template(obj: object) -> bytes:
    """``obj`` as JSON with each ``"%d"`` string bare: a bytes %-template, for a loop that
    cannot afford a dumps per chunk (the benchmarks' upstreams)."""
    return orjson.dumps(obj).replace(b'"%d"', b"%d")


def completion_body(chat: bool, model: str, n: int, b: Behavior) -> bytes:
    choices = [answer_choice(j, chat, b.text(), b.finish_reason) for j in range(n)]
    body = envelope(chat, "chat.completion" if chat else "text_completion", model, choices)
    if b.usage != "never":
        body["usage"] = usage(b.prompt_tokens, n * b.completion_tokens)
    if b.engine_metrics is not None:
        body["metrics"] = b.engine_metrics
    return orjson.dumps(body)


def completion_steps(chat: bool, model: str, body: dict[str, Any], b: Behavior, n: int) -> Steps:
    """A chat or text completion stream: the role chunks, ``n`` chunks a token (continuous
    usage counts per choice, as vLLM does), the usage chunk when asked."""
    include_usage, continuous_usage = usage_options(body)
    # vLLM only honours continuous_usage_stats together with include_usage.
    with_usage = b.usage in ("always", "force") or (b.usage == "honor" and include_usage)
    continuous = (with_usage and continuous_usage) or b.usage == "force"

    def chunk(choice: dict[str, Any] | None, done_tokens: int) -> bytes:
        obj = envelope(chat, chunk_kind(chat), model, [] if choice is None else [choice])
        on_finish = b.usage == "finish" and choice is not None and choice["finish_reason"]
        if continuous or choice is None or on_finish:
            obj["usage"] = usage(b.prompt_tokens, done_tokens)
        if choice is None and b.engine_metrics is not None:
            obj["metrics"] = b.engine_metrics
        finishing = choice is not None and choice["finish_reason"] is not None
        if b.system_fingerprint is not None and (choice is None or (finishing and not with_usage)):
            obj["system_fingerprint"] = b.system_fingerprint
        return data_frame(orjson.dumps(obj), b)

    def step(i: int) -> list[bytes]:
        finish = b.finish_reason if i == b.completion_tokens - 1 else None
        return [chunk(stream_choice(j, chat, b.token(i), finish), i + 1) for j in range(n)]

    first = [chunk(role_choice(j), 0) for j in range(n)] if chat and b.role_chunk else []
    last = [chunk(None, n * b.completion_tokens)] if with_usage else []
    return Steps(first, step, last)
