"""vLLM's pooling routes and its other engine routes (tokens in and out, decisions,
generative scoring), each answer in vLLM's shape."""

from __future__ import annotations

from typing import Any

import orjson

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.frames import Steps, data_frame
from metrics_proxy.simulator.openai_shapes import CREATED, usage
from metrics_proxy.simulator.request_fields import input_count, usage_options

POOLING_ANSWERS: dict[str, tuple[str, dict[str, Any]]] = {  # path: (id, one datum)
    "/v1/embeddings": ("embd-fake", {"object": "embedding", "embedding": [0.0, 0.5, 1.0]}),
    "/pooling": ("pool-fake", {"object": "pooling", "data": [0.0, 0.5, 1.0]}),
    "/classify": ("classify-fake", {"label": "yes", "probs": [0.25, 0.75], "num_classes": 2}),
    "/score": ("score-fake", {"object": "score", "score": 0.5}),
    "/v1/score": ("score-fake", {"object": "score", "score": 0.5}),
}
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
POOLING_PATHS = (*POOLING_ANSWERS, *RERANK_PATHS, "/v2/embed")


def _model(body: dict[str, Any]) -> str:
    return str(body.get("model") or "fake-model")


def _pooling_answer(path: str, body: dict[str, Any], b: Behavior) -> dict[str, Any]:
    model, count, p = _model(body), input_count(body), b.prompt_tokens
    if path in RERANK_PATHS:  # a rerank usage of vLLM's that says only total_tokens
        results = [
            {"index": i, "document": {"text": f"doc{i}"}, "relevance_score": 0.5}
            for i in range(count)
        ]
        return {
            "id": "rerank-fake",
            "model": model,
            "usage": {"total_tokens": p},
            "results": results,
        }
    if path == "/v2/embed":
        meta = {"api_version": {"version": "2"}, "tokens": {"input_tokens": p}}
        embeddings = {"float": [[0.0, 0.5, 1.0]] * count}
        return {"id": "embd-fake", "embeddings": embeddings, "texts": None, "meta": meta}
    answer_id, datum = POOLING_ANSWERS[path]
    data = [{"index": i, **datum} for i in range(count)]
    answer: dict[str, Any] = {"id": answer_id, "object": "list", "created": CREATED}
    return answer | {"model": model, "data": data, "usage": usage(p, 0)}


def pooling_body(path: str, body: dict[str, Any], b: Behavior) -> bytes:
    answer = _pooling_answer(path, body, b)
    if b.usage == "never":
        answer.pop("usage", None)
        answer.get("meta", {}).pop("tokens", None)
    return orjson.dumps(answer)


def decisions_body(body: dict[str, Any], b: Behavior) -> bytes:
    questions = body.get("questions")
    count = len(questions) if isinstance(questions, list) else 0
    answers = [{"type": "predicate", "name": f"q{i}", "probability": 0.5} for i in range(count)]
    p, c = b.prompt_tokens, b.completion_tokens
    counts: dict[str, Any] = {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0}}
    counts |= {"output_tokens": c, "output_tokens_details": {"reasoning_tokens": 0}}
    answer: dict[str, Any] = {"model": _model(body), "answers": answers}
    if b.usage != "never":
        answer["usage"] = counts | {"total_tokens": p + c}
    return orjson.dumps(answer)


def generative_scoring_body(body: dict[str, Any], b: Behavior) -> bytes:
    items = body.get("items")
    count = len(items) if isinstance(items, list) else 0
    data = [{"index": i, "object": "score", "score": 0.5} for i in range(count)]
    answer: dict[str, Any] = {"id": "generative-scoring-fake", "object": "list", "created": CREATED}
    answer |= {"model": _model(body), "data": data}
    if b.usage != "never":
        answer["usage"] = usage(b.prompt_tokens, b.completion_tokens)
    return orjson.dumps(answer)


def token_steps(body: dict[str, Any], b: Behavior, n: int) -> Steps:
    """/inference/v1/generate's stream: a chunk of token ids per output and step, usage on
    each (continuous_usage_stats) and in a last usage-only chunk when asked."""
    include_usage, continuous_usage = usage_options(body)
    with_usage = b.usage == "always" or (b.usage == "honor" and include_usage)
    last_step = b.completion_tokens - 1

    def step(i: int) -> list[bytes]:
        finish = b.finish_reason if i == last_step else None
        chunks = []
        for j in range(n):
            choice = {"index": j, "logprobs": None, "finish_reason": finish, "token_ids": [100 + i]}
            chunk: dict[str, Any] = {"request_id": "generate-tokens-fake", "choices": [choice]}
            if with_usage and continuous_usage:
                chunk["usage"] = usage(b.prompt_tokens, i + 1)
            chunks.append(data_frame(orjson.dumps(chunk), b))
        return chunks

    counts = usage(b.prompt_tokens, n * b.completion_tokens)
    final = {"request_id": "generate-tokens-fake", "choices": [], "usage": counts}
    return Steps([], step, [data_frame(orjson.dumps(final), b)] if with_usage else [])


def tokens_body(n: int, b: Behavior) -> bytes:
    token_ids = [100 + i for i in range(b.completion_tokens)]
    choices = [
        {"index": j, "logprobs": None, "finish_reason": b.finish_reason, "token_ids": token_ids}
        for j in range(n)
    ]
    answer: dict[str, Any] = {"request_id": "generate-tokens-fake", "choices": choices}
    if b.usage != "never":
        answer["usage"] = usage(b.prompt_tokens, n * b.completion_tokens)
    return orjson.dumps(answer | {"prompt_logprobs": None, "kv_transfer_params": None})
