"""Background responses: answered (``queued``) at once, finished later, out of any exchange.

A metered exchange that ends while its response runs on hands its record here instead of
settling it. The record waits, holding no gauge, until an answer the proxy forwards about
that response (``GET /v1/responses/{id}``, streamed or not, or ``POST …/cancel``) shows it
finished: then, and only then, it is counted, with that answer's finish and usage. Each is
counted once: the first answer that shows it finished takes it out. One never seen to
finish is dropped uncounted after HOLD_SECONDS, or when MAX_HELD newer ones wait. Pure: no
I/O; the caller forwards the answers and feeds them through a RetrievalWatch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from metrics_proxy.apis.base import NO_INJECTION, Api, BodyReader, Usage
from metrics_proxy.record import RequestRecord
from metrics_proxy.stream_meter import StreamMeter

__all__ = [
    "HOLD_SECONDS",
    "MAX_HELD",
    "Finish",
    "HeldResponses",
    "RetrievalWatch",
    "retrieved_id",
]

# Long enough for a long generation, polled or not; a record is a few hundred bytes.
HOLD_SECONDS = 24 * 3600.0
MAX_HELD = 10_000

# How a response ended, as an answer about it showed: the finish word and the usage.
Finish = tuple[str, Usage | None]

_RETRIEVAL_PREFIX = "/v1/responses/"
_CANCEL_SUFFIX = "/cancel"


def retrieved_id(path: str) -> str | None:
    """The response id in a path vLLM answers with that response (``/v1/responses/{id}``
    and ``/v1/responses/{id}/cancel``, decoded as vLLM decodes it), or None."""
    if not path.startswith(_RETRIEVAL_PREFIX):
        return None
    response_id = path[len(_RETRIEVAL_PREFIX) :].removesuffix(_CANCEL_SUFFIX)
    return response_id if response_id and "/" not in response_id else None


class HeldResponses:
    """The records of responses that run on after their exchange, by response id, oldest
    first; bounded in number and in time."""

    __slots__ = ("_clock", "_held", "_hold_for", "_limit")

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        hold_for: float = HOLD_SECONDS,
        limit: int = MAX_HELD,
    ) -> None:
        self._clock = clock
        self._hold_for = hold_for
        self._limit = limit
        self._held: OrderedDict[str, tuple[RequestRecord, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, response_id: str, record: RequestRecord) -> None:
        """Keep ``record`` for when ``response_id`` is seen finished; its gauges go back now.
        A second response under the same id replaces the first."""
        now = self._clock()
        record.detach(now)
        held = self._held
        held.pop(response_id, None)
        self._expire(now)
        while len(held) >= self._limit:
            held.popitem(last=False)
        held[response_id] = (record, now + self._hold_for)

    def holds(self, response_id: str) -> bool:
        self._expire(self._clock())
        return response_id in self._held

    def settle(self, response_id: str, finish: Finish | None) -> RequestRecord | None:
        """Count the held response ``response_id`` if ``finish`` (an answer's finish word and
        usage) says it finished; the record counted, or None."""
        if finish is None:
            return None
        entry = self._held.pop(response_id, None)
        if entry is None:
            return None
        record = entry[0]
        word, usage = finish
        record.finish_with(word)
        record.report_usage(usage)
        record.settle()
        return record

    def _expire(self, now: float) -> None:
        held = self._held
        while held:
            response_id, (_, expires) = next(iter(held.items()))
            if expires > now:
                return
            del held[response_id]


class _Reading:
    """A body filter that lets every byte through and feeds it to a reader."""

    __slots__ = ("_feed",)
    stopped = False

    def __init__(self, feed: Callable[[bytes], object]) -> None:
        self._feed = feed

    def feed(self, chunk: bytes) -> bytes:
        self._feed(chunk)
        return chunk


_NOT_READ = _Reading(lambda chunk: None)


class RetrievalWatch:
    """Reads a forwarded answer about a response (a JSON object or an event stream, told by
    its Content-Type) for whether it shows that response finished."""

    __slots__ = ("_api", "_body", "_meter")

    def __init__(self, api: Api) -> None:
        self._api = api
        self._body: BodyReader | None = None
        self._meter: StreamMeter | None = None

    def reader(self, status: int, content_type: str) -> _Reading:
        """The filter for an answer of this status and type; only a success is read."""
        if status >= 300:
            return _NOT_READ
        if content_type == "text/event-stream":
            meter = self._meter = StreamMeter(self._api, NO_INJECTION)
            return _Reading(meter.feed)
        if content_type == "application/json":
            body = self._body = self._api.body_reader()
            return _Reading(body.feed)
        return _NOT_READ

    def finish(self) -> Finish | None:
        """The finish word and usage of a response the answer showed finished, or None."""
        meter = self._meter
        if meter is not None:
            meter.close()
            if meter.upstream_error:
                return "error", meter.usage
            word = meter.finish_reason
            return None if word is None else (word, meter.usage)
        if self._body is None:
            return None
        facts = self._body.facts()
        if facts.pending_id is not None or facts.finish_reason is None:
            return None
        return facts.finish_reason, facts.usage
