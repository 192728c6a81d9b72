"""What one simulated server keeps: its default Behavior and how each request gets its own,
the Responses API's store, and the hooks a watcher (the test suite) fills in."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

from metrics_proxy.simulator.behavior import Behavior
from metrics_proxy.simulator.metrics_shapes import EngineLoad
from metrics_proxy.simulator.profile import Profile

# The KV cache a running request holds, in tokens: a made-up, typical chat exchange.
TOKENS_PER_REQUEST = 1024

# How a response ended: written to the end, cut short by the simulator itself (a Behavior's
# reset_after), or abandoned because the client went away.
Outcome = Literal["completed", "reset", "closed_early"]


class Reset(Exception):
    """The simulator aborted the connection on purpose; not a client disconnect."""


@dataclass(eq=False)
class StoredResponse:
    """A response kept for ``GET /v1/responses/{id}`` (vLLM's store): its latest object, the
    SSE events of a background stream so far, whether it is over, and the task running it."""

    body: dict[str, Any]
    stream: bool = False  # a background stream: its events are kept, to be streamed again
    events: list[bytes] = field(default_factory=list)
    finished: bool = False
    task: asyncio.Task[None] | None = None
    moved: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def move_on(self) -> None:
        """An event was kept, or the response is over: wake who replays it."""
        # Swap in a fresh event so every current reader wakes exactly once per change.
        moved, self.moved = self.moved, asyncio.Event()
        moved.set()


class Simulation:
    """One simulated vLLM. Without a Profile every request gets ``behavior``, unchanged;
    with one, each gets its own draw (lengths, pacing, errors) from the Profile."""

    def __init__(
        self,
        behavior: Behavior | None = None,
        *,
        profile: Profile | None = None,
        seed: int | None = None,
        model: str | None = None,
    ) -> None:
        self.behavior = behavior or Behavior()
        self.profile = profile
        self._model = model
        self.running = 0  # responses being served now (the engine's running requests)
        self.served = 0  # ... and served to their end or cut
        self.responses: dict[str, StoredResponse] = {}
        # The entries of GET /v1/models, as vLLM writes them (LoRA adapters with a "parent"):
        # None lists the one served model. A router in front of several would list them all.
        self.model_list: list[dict[str, Any]] | None = None
        self._rng = random.Random(seed)
        self._response_ids = 0

    @property
    def model(self) -> str:
        """The served model's name: answers to requests that name none carry it."""
        if self._model is not None:
            return self._model
        return self.profile.model if self.profile is not None else "fake-model"

    def listed_models(self) -> list[dict[str, Any]]:
        """The entries of ``GET /v1/models``."""
        if self.model_list is not None:
            return self.model_list
        return [{"id": self.model, "object": "model"}]

    def load(self) -> EngineLoad:
        """What the engine holds now, as its /metrics reports it."""
        held = self.running * TOKENS_PER_REQUEST
        return EngineLoad(running=self.running, served=self.served, tokens_held=held)

    def behavior_for(self, request: web.Request, body: dict[str, Any]) -> Behavior:
        """How to answer this request; ValueError refuses it with a 400."""
        if self.profile is None:
            return self.behavior
        return self.profile.draw(body, self.behavior, self._rng)

    def next_response_id(self) -> str:
        self._response_ids += 1
        return f"resp_fake{self._response_ids}"

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Around each response that may stream or fail on purpose: its outcome goes to
        ``ended``. A client leaving is an outcome, not an error for aiohttp to log."""
        self.started()
        self.running += 1
        outcome: Outcome | None = None
        try:
            yield
            outcome = "completed"
        except Reset:
            outcome = "reset"
        except ConnectionResetError:
            outcome = "closed_early"
        except asyncio.CancelledError:
            outcome = "closed_early"
            raise
        finally:
            self.running -= 1
            self.served += 1
            self.ended(outcome)

    def started(self) -> None:
        """A response began (a hook: the tests count them)."""

    def ended(self, outcome: Outcome | None) -> None:
        """A response ended this way, or by an unexpected error (None) (a hook)."""

    def changed(self) -> None:
        """A background response moved on (a hook: the tests wait on it)."""


SIMULATION = web.AppKey("simulation", Simulation)
