"""The simulated vLLM as an aiohttp application: every route the proxy meters, in vLLM's
wire format, plus /v1/models and /health."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from metrics_proxy.simulator import (
    audio_routes,
    engine_routes,
    messages_routes,
    openai_routes,
    responses_routes,
)
from metrics_proxy.simulator.audio_shapes import AUDIO_CHUNKS
from metrics_proxy.simulator.engine_shapes import POOLING_PATHS
from metrics_proxy.simulator.state import SIMULATION, Simulation


def make_simulator(
    simulation: Simulation | None = None, *, middlewares: Iterable[Middleware] = ()
) -> web.Application:
    """The simulator's app, answering as ``simulation`` says (by default: every request the
    default Behavior). Serve it with ``handler_cancellation=True`` (see ``pacing``)."""
    app = web.Application(middlewares=middlewares)
    app[SIMULATION] = simulation or Simulation()
    router = app.router
    router.add_post("/v1/chat/completions", openai_routes.generate)
    router.add_post("/v1/completions", openai_routes.generate)
    router.add_get("/v1/models", openai_routes.models)
    router.add_get("/health", openai_routes.health)
    router.add_get("/metrics", openai_routes.engine_metrics)
    for path in AUDIO_CHUNKS:
        router.add_post(path, audio_routes.audio)
    router.add_post("/v1/messages", messages_routes.messages)
    router.add_post("/v1/messages/count_tokens", messages_routes.count_tokens)
    router.add_post("/v1/responses", responses_routes.create_response)
    router.add_get("/v1/responses/{response_id}", responses_routes.retrieve_response)
    router.add_post("/v1/responses/{response_id}/cancel", responses_routes.cancel_response)
    app.on_cleanup.append(responses_routes.stop_background)
    for path in POOLING_PATHS:
        router.add_post(path, engine_routes.pooling)
    router.add_post("/v1/chat/completions/batch", engine_routes.chat_batch)
    router.add_post("/inference/v1/generate", engine_routes.generate_tokens)
    router.add_post("/cohere/v2/chat", engine_routes.cohere_chat)
    router.add_post("/v1/decisions", engine_routes.decisions)
    router.add_post("/generative_scoring", engine_routes.generative_scoring)
    router.add_post("/invocations", engine_routes.invocations)
    return app
