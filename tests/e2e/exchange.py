"""What a client sees of one exchange (status, bytes, events, and when the first output and
the end came), and what the proxy counted, read from its JSON snapshot."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient

EVENT_STREAM = "text/event-stream"
# The values that differ between two runs of one request: ids and timestamps.
_VOLATILE = re.compile(rb'"(id|item_id|created|created_at)":("[^"]*"|[0-9.]+)')
SETTLE_TIMEOUT = 10.0  # seconds
EXCHANGE_TIMEOUT = aiohttp.ClientTimeout(total=60.0)  # a few words take milliseconds


def carries_output(event: Any) -> bool:
    """Whether a streamed event holds generated text: chat's delta, completions' text, or
    a Responses text delta."""
    if not isinstance(event, dict):
        return False
    if event.get("type") == "response.output_text.delta":
        return bool(event.get("delta"))
    for choice in event.get("choices") or ():
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def comparable(body: bytes) -> bytes:
    """An answer's bytes with its ids and timestamps blanked: two runs of one request to a
    server that decodes greedily give the same."""
    return _VOLATILE.sub(rb'"\1":"-"', body)


@dataclass
class Answer:
    """One exchange as the client saw it; times are time.monotonic(), the in-process proxy's
    clock too."""

    status: int
    content_type: str
    body: bytes = b""
    events: list[Any] = field(default_factory=list)  # each SSE event's decoded data
    started: float = 0.0
    first_output_at: float | None = None

    @property
    def streamed(self) -> bool:
        return self.content_type == EVENT_STREAM

    @property
    def decoded(self) -> Any:
        """What a client reads: the events of a stream, or the JSON body."""
        return self.events if self.streamed else orjson.loads(self.body)

    @property
    def ttft(self) -> float:
        assert self.first_output_at is not None, "no output was seen"
        return self.first_output_at - self.started

    @property
    def outputs(self) -> int:
        return sum(carries_output(event) for event in self.events)

    def _last(self, key: str) -> Any:
        found = None
        for obj in self.events if self.streamed else [self.decoded]:
            if isinstance(obj, dict):
                obj = obj.get("response", obj)  # Responses wraps its answer in events
                found = obj.get(key, found)
        return found

    @property
    def usage_member(self) -> Any:
        """The last ``usage`` in the answer, as it came (None when there is none)."""
        return self._last("usage")

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt, generated) tokens as reported, in either API's words."""
        usage = self.usage_member
        assert isinstance(usage, dict), f"no usage in this answer: {self.body[-600:]!r}"
        if "input_tokens" in usage:
            return usage["input_tokens"], usage["output_tokens"]
        return usage["prompt_tokens"], usage["completion_tokens"]

    @property
    def finish_reason(self) -> str:
        reasons = [c.get("finish_reason") for c in self._last("choices") or ()]
        assert reasons, "no finish in this answer"
        assert isinstance(reasons[-1], str), "no finish in this answer"
        return reasons[-1]


class _EventReader:
    """Splits an event stream into the decoded data of its events (``data:`` lines only)."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[Any]:
        self._pending += chunk.replace(b"\r\n", b"\n")
        *whole, self._pending = self._pending.split(b"\n\n")
        events = []
        for event in whole:
            data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line[:5] == b"data:"]
            if data:
                events.append(orjson.loads(b"\n".join(data)))
        return events


async def exchange(
    session: aiohttp.ClientSession, url: str, body: Any, *, leave_after: int | None = None
) -> Answer:
    """POST ``body`` and read the whole answer, timing it; with ``leave_after``, close the
    connection once that many events carrying output have arrived, as a client that leaves."""
    started = time.monotonic()
    async with session.post(url, json=body, timeout=EXCHANGE_TIMEOUT) as response:
        answer = Answer(response.status, response.content_type, started=started)
        reader = _EventReader()
        async for chunk in response.content.iter_any():
            answer.body += chunk
            if not answer.streamed:
                continue
            for event in reader.feed(chunk):
                answer.events.append(event)
                if carries_output(event) and answer.first_output_at is None:
                    answer.first_output_at = time.monotonic()
            if leave_after is not None and answer.outputs >= leave_after:
                response.close()
                break
    return answer


@dataclass
class Proxy:
    """The proxy under test, in this process: where to send requests, what it counted."""

    client: TestClient[web.Request, web.Application]

    def url(self, path: str) -> str:
        return str(self.client.make_url(path))

    async def families(self) -> dict[str, dict[str, Any]]:
        response = await self.client.get("/internal/metrics")
        assert response.status == 200
        return {f["name"]: f for f in (await response.json())["families"]}

    async def value(self, name: str, **labels: str) -> Any:
        """The one series of ``name`` with these labels: a number, or a histogram's dict."""
        for sample in (await self.families())[name]["samples"]:
            if all(sample["labels"].get(k) == v for k, v in labels.items()):
                return sample.get("value", sample)
        raise KeyError((name, labels))

    async def by_label(self, name: str, label: str) -> dict[str, float]:
        """A counter's non-zero series, by the value of one label."""
        samples = (await self.families())[name]["samples"]
        return {s["labels"][label]: s["value"] for s in samples if s["value"]}

    async def settled(self) -> float:
        """Wait (bounded) until no request is running or waiting, and say when that was
        seen: the proxy accounts a request just after its last byte, so a client can see
        the end of its answer a moment before the proxy has counted it."""
        async with asyncio.timeout(SETTLE_TIMEOUT):
            while True:
                families = await self.families()
                gauges = ("vllm:num_requests_running", "vllm:num_requests_waiting")
                if not any(families[g]["samples"][0]["value"] for g in gauges):
                    return time.monotonic()
                await asyncio.sleep(0.01)
