"""The seed stack, a reference lane (not shipped): the user's first metrics proxy, as it was.

FastAPI + uvicorn + httpx.AsyncClient + prometheus-client, doing the proxy's job for
POST /v1/chat/completions alone: forward the request, streaming or not; record a few
vLLM-named series (end-to-end latency, TTFT, prompt and generation tokens from usage, requests
running); serve them on GET /metrics with generate_latest. Written plainly, as such a tool is:
neither sabotaged nor tuned (uvicorn's and httpx's defaults, one process; uvicorn's log at
warning, as the proxy lane runs, so neither logs a line per request).

Needs the bench extra (``pip install -e '.[bench]'``; ``make bench`` installs it).
Run: python benchmarks/seed_stack_proxy.py UPSTREAM_URL [--port 8000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

E2E = Histogram(
    "vllm:e2e_request_latency_seconds",
    "Histogram of end to end request latency in seconds.",
    ["model_name"],
    buckets=[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0],
)
TTFT = Histogram(
    "vllm:time_to_first_token_seconds",
    "Histogram of time to first token in seconds.",
    ["model_name"],
    buckets=[0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0],
)
PROMPT_TOKENS = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", ["model_name"])
GENERATION_TOKENS = Counter(
    "vllm:generation_tokens", "Number of generation tokens processed.", ["model_name"]
)
RUNNING = Gauge("vllm:num_requests_running", "Number of requests running.", ["model_name"])

# Hop-by-hop and length headers are the client library's to set, not ours to copy.
SKIP_HEADERS = {"host", "content-length", "connection", "transfer-encoding"}


def count_usage(usage: Any, model: str) -> None:
    if usage:
        PROMPT_TOKENS.labels(model).inc(usage.get("prompt_tokens") or 0)
        GENERATION_TOKENS.labels(model).inc(usage.get("completion_tokens") or 0)


def build_app(upstream: str) -> Any:
    app = FastAPI()
    client = httpx.AsyncClient(base_url=upstream, timeout=600.0)

    async def chat_completions(request: Request) -> Response:
        body = await request.json()
        model = str(body.get("model", ""))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in SKIP_HEADERS}
        start = time.perf_counter()
        RUNNING.labels(model).inc()
        if body.get("stream"):
            return await stream(body, headers, model, start)
        try:
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
        finally:
            RUNNING.labels(model).dec()
            E2E.labels(model).observe(time.perf_counter() - start)
        data = response.json()
        if response.status_code == 200:
            count_usage(data.get("usage"), model)
        return JSONResponse(data, status_code=response.status_code)

    async def stream(body: Any, headers: dict[str, str], model: str, start: float) -> Response:
        # Ask for the usage chunk, so that streamed requests count their tokens too.
        body.setdefault("stream_options", {})["include_usage"] = True
        try:
            upstream_request = client.build_request(
                "POST", "/v1/chat/completions", json=body, headers=headers
            )
            response = await client.send(upstream_request, stream=True)
        except Exception:
            RUNNING.labels(model).dec()
            raise
        return StreamingResponse(
            relay(response, model, start),
            status_code=response.status_code,
            media_type="text/event-stream",
        )

    async def relay(response: Any, model: str, start: float) -> AsyncIterator[str]:
        first = True
        try:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    if first:
                        TTFT.labels(model).observe(time.perf_counter() - start)
                        first = False
                    count_usage(json.loads(line[6:]).get("usage"), model)
                yield line + "\n"
        finally:
            await response.aclose()
            RUNNING.labels(model).dec()
            E2E.labels(model).observe(time.perf_counter() - start)

    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    # add_api_route is what FastAPI's @app.post/@app.get decorators call; spelled out so that
    # mypy --strict reads this file the same whether or not the bench extra is installed.
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("upstream")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    app = build_app(args.upstream.rstrip("/"))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
