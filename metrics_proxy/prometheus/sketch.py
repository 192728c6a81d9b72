"""Quantiles you can trust: a small mergeable sketch kept beside every histogram.

Prometheus buckets are coarse (vLLM's e2e buckets start at 0.3 s), so a quantile interpolated
inside them can be far from any value observed. The sketch counts each observation under a
key on a logarithmic scale (DDSketch's mapping): key ``i`` holds the values in
``(GAMMA**(i-1), GAMMA**i]``, ``GAMMA = (1 + a) / (1 - a)`` for a relative accuracy ``a`` of
1 %, and reports them as the one value within ``a`` of all of them, so a quantile read from it
is within 1 % of the true sample quantile, whatever the distribution. Zero (and anything not
above it) has a key of its own and reads back as exactly 0; a sketch of counts (tokens, ``n``)
reads back the exact integer while a key holds only one (below about 50). Sketches merge by
adding counts per key.

:class:`WindowedSketch` keeps one per histogram series, both since start and over the last
minute: a ring of per-interval stores that moves on lazily, when an observation or a read
finds the current interval over, never on a timer.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_MULTIPLIER = 1 / math.log(GAMMA)
# What key i reports: within RELATIVE_ACCURACY of both ends of (GAMMA**(i-1), GAMMA**i].
_REPRESENTATIVE = 2 / (GAMMA + 1)
ZERO_KEY = -(2**40)  # zero, negatives and NaN: below every logarithmic key
INF_KEY = 2**40  # +Inf: above every one
_INF = math.inf

WINDOW_SECONDS = 60.0
WINDOW_SLOTS = 12  # 5-second intervals: the window covers the last 55 to 60 seconds

Store = dict[int, int]  # key -> how many observations it holds
# Keys up to here span less than 1: GAMMA**i - GAMMA**(i-1) < 1 below GAMMA / (GAMMA - 1), ~50.
_LAST_NARROW_KEY = math.floor(math.log(GAMMA / (GAMMA - 1)) * _MULTIPLIER) - 1


def key_of(value: float) -> int:
    """The key that counts ``value``."""
    if 0.0 < value < _INF:
        return math.ceil(math.log(value) * _MULTIPLIER)
    return INF_KEY if value == _INF else ZERO_KEY


def _sole_integer(key: int) -> int | None:
    # A key narrower than 1 holds at most one integer; key_of decides which, as it did when
    # the value was counted, so rounding at the key's edges cannot disagree.
    if key > _LAST_NARROW_KEY:
        return None
    upper = GAMMA**key
    candidates = range(max(1, math.floor(upper) - 1), math.floor(upper) + 2)
    held = [k for k in candidates if key_of(k) == key]
    return held[0] if len(held) == 1 else None


def value_of(key: int, *, integers: bool = False) -> float:
    """What the sketch reports for the observations under ``key``: within 1 % of each of them,
    and exact for zero, ``+Inf`` and (``integers``) a key that holds one integer only."""
    if key == ZERO_KEY:
        return 0.0
    if key == INF_KEY:
        return _INF
    if integers:
        sole = _sole_integer(key)
        if sole is not None:
            return float(sole)
    try:
        return _REPRESENTATIVE * GAMMA**key
    except OverflowError:  # a key above the largest float: its values are the largest ones
        return 1.7976931348623157e308


def merge(stores: Iterable[Mapping[int, int]]) -> Store:
    """One store holding the observations of all of ``stores`` (none of them is changed)."""
    filled = [store for store in stores if store]
    if len(filled) == 1:
        return dict(filled[0])
    merged: Store = {}
    for store in filled:
        for key, count in store.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def _nearest_rank(q: float, total: int) -> int:
    # ceil(q * total), in integers so that 0.99 * 100 is 99 and not 99.00000000000001.
    millionths = round(q * 1_000_000)
    return max(1, -(-total * millionths // 1_000_000))


def quantiles(
    store: Mapping[int, int], qs: Sequence[float], *, integers: bool = False
) -> list[float | None]:
    """The nearest-rank quantile ``q`` for each of ``qs`` (the smallest value with at least
    ``q`` of the observations at or below it), within 1 %; ``None`` for an empty store."""
    keys = sorted(store)
    cumulative = list(accumulate(store[key] for key in keys))
    if not cumulative or cumulative[-1] == 0:
        return [None] * len(qs)
    total = cumulative[-1]
    return [
        value_of(keys[bisect_left(cumulative, _nearest_rank(q, total))], integers=integers)
        for q in qs
    ]


@dataclass(frozen=True, slots=True)
class SketchView:
    """A sketch as read at one moment. ``expired`` holds what left the window; ``recent`` the
    stores of the window's intervals. Nothing here is changed after it is handed out."""

    expired: Mapping[int, int]
    recent: tuple[Mapping[int, int], ...]
    integers: bool
    window_seconds: float

    def since_start(self) -> Store:
        return merge((self.expired, *self.recent))

    def in_window(self) -> Store:
        return merge(self.recent)


class WindowedSketch:
    """One series' sketch: since start, and over the last ``window_seconds`` as ``slots``
    per-interval stores merged on read. ``clock`` is monotonic seconds (injected in tests)."""

    __slots__ = (
        "_clock",
        "_current",
        "_ends_at",
        "_expired",
        "_index",
        "_recent",
        "_slot_seconds",
        "_slots",
        "integers",
        "window_seconds",
    )

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        integers: bool = False,
        window_seconds: float = WINDOW_SECONDS,
        slots: int = WINDOW_SLOTS,
    ) -> None:
        if not (window_seconds > 0 and slots >= 1):
            raise ValueError(f"a window needs seconds > 0 and slots >= 1: {window_seconds, slots}")
        self._clock = clock
        self.integers = integers
        self.window_seconds = window_seconds
        self._slots = slots
        self._slot_seconds = window_seconds / slots
        self._index = math.floor(clock() / self._slot_seconds)
        self._ends_at = (self._index + 1) * self._slot_seconds
        self._current: Store = {}
        # Closed intervals still in the window, oldest first, never changed once closed.
        self._recent: deque[tuple[int, Store]] = deque()
        # Everything older, replaced (not changed) when an interval joins it.
        self._expired: Store = {}

    def add(self, value: float, now: float | None = None) -> None:
        """Count one observation: the hot path (once per streamed chunk for the ITL);
        ``now`` is this sketch's clock as the caller just read it."""
        if now is None:
            now = self._clock()
        if now >= self._ends_at:
            self._advance(now)
        key = math.ceil(math.log(value) * _MULTIPLIER) if 0.0 < value < _INF else key_of(value)
        current = self._current
        current[key] = current.get(key, 0) + 1

    def view(self) -> SketchView:
        """What the sketch holds now: the window first moves on to the present."""
        now = self._clock()
        if now >= self._ends_at:
            self._advance(now)
        recent = (*(store for _, store in self._recent), dict(self._current))
        return SketchView(self._expired, recent, self.integers, self.window_seconds)

    def _advance(self, now: float) -> None:
        # A float quotient may land a hair short of the next interval: never stay behind.
        index = max(math.floor(now / self._slot_seconds), self._index + 1)
        if self._current:
            self._recent.append((self._index, self._current))
            self._current = {}
        self._index = index
        self._ends_at = (index + 1) * self._slot_seconds
        oldest = index - self._slots + 1
        while self._recent and self._recent[0][0] < oldest:
            self._expired = merge((self._expired, self._recent.popleft()[1]))
