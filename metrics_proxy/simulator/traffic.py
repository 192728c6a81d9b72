"""A little background traffic: requests at about ``rate`` a second (Poisson arrivals), the
mix clients send (mostly streamed chats, some whole ones, a few completions, some cut short
by ``max_tokens``), read to the end and dropped. It runs until cancelled."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import aiohttp

log = logging.getLogger("metrics_proxy.simulator")

_PROMPTS = (
    "Explain what a reverse proxy does.",
    "Write a haiku about latency.",
    "Summarise the plot of a heist film in three sentences.",
    "List five uses for Prometheus histograms.",
    "What is the time to first token, and why does it matter?",
)
_MAX_IN_FLIGHT = 32  # past it, arrivals are skipped: a slow target never piles requests up


def one_request(rng: random.Random, model: str) -> tuple[str, dict[str, Any]]:
    """A request as clients send them: its path and body."""
    prompt = rng.choice(_PROMPTS)
    stream = rng.random() < 0.7
    if rng.random() < 0.8:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
        path = "/v1/chat/completions"
    else:
        body, path = {"prompt": prompt}, "/v1/completions"
    body |= {"model": model, "stream": stream}
    if rng.random() < 0.2:
        body["max_tokens"] = rng.randint(8, 40)
    return path, body


async def _send(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any], in_flight: asyncio.Semaphore
) -> None:
    async with in_flight:
        try:
            async with session.post(url, json=body) as response:
                async for _ in response.content.iter_any():
                    pass
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("background request failed: %s", type(exc).__name__)


async def send_traffic(
    base_url: str, rate: float, model: str, *, api_key: str = "", seed: int | None = None
) -> None:
    """Send requests to ``base_url`` at about ``rate`` a second until cancelled; the key,
    when given, as a bearer token (never logged)."""
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=300)
    async with (
        aiohttp.ClientSession(headers=headers, timeout=timeout) as session,
        asyncio.TaskGroup() as requests,
    ):
        while True:
            await asyncio.sleep(rng.expovariate(rate))
            if in_flight.locked():
                continue
            path, body = one_request(rng, model)
            requests.create_task(_send(session, base_url + path, body, in_flight))
