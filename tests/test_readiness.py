"""/internal/readyz: ready only while not draining and the upstream answers; cheap and cached."""

from __future__ import annotations

import socket

from tests.support.stack import StackFactory


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_ready_when_the_upstream_answers(make_stack: StackFactory) -> None:
    stack = await make_stack()
    for _ in range(5):
        response = await stack.client.get("/internal/readyz")
        assert response.status == 200
        assert await response.json() == {"status": "ready", "upstream": "ok"}
    # Five probes, one cheap upstream check (cached), never a completion.
    assert [(r.method, r.path) for r in stack.state.requests] == [("GET", "/health")]


async def test_not_ready_when_the_upstream_is_down(make_stack: StackFactory) -> None:
    stack = await make_stack(upstream_url=f"http://127.0.0.1:{closed_port()}")
    response = await stack.client.get("/internal/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "upstream_unavailable"}
    live = await stack.client.get("/internal/healthz")
    assert live.status == 200  # liveness does not depend on the upstream


async def test_not_ready_while_draining(make_stack: StackFactory) -> None:
    from metrics_proxy.server import LIFECYCLE

    stack = await make_stack()
    stack.client.app[LIFECYCLE].draining = True
    response = await stack.client.get("/internal/readyz")
    assert response.status == 503
    assert await response.json() == {"status": "draining"}
    refused = await stack.client.post("/v1/chat/completions", data=b'{"messages": []}')
    assert refused.status == 503
    assert not stack.state.requests
