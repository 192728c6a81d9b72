"""Counter, Gauge and Histogram, each a parent that hands out cached per-label children.

Metrics change only on the event loop thread, so values are plain attributes with no
locks: a proxy process is single-threaded by design.

Example::

    requests = Counter("vllm:request_success", "Count of successfully processed requests.",
                       ("model_name", "engine", "finished_reason"))
    requests.labels(model_name="m", engine="0", finished_reason="stop").inc()

    ttft = Histogram("vllm:time_to_first_token_seconds", "...", ("model_name",), (0.1, 1.0))
    ttft.labels("m").observe(0.25)
"""

from __future__ import annotations

import math
import re
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Generic, TypeVar

from metrics_proxy.prometheus.samples import HistogramValue, MetricFamily, MetricType, Sample
from metrics_proxy.prometheus.sketch import WindowedSketch

_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_INF = float("inf")


class CounterChild:
    """One counter series. ``inc`` rejects negative amounts: counters only go up."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError(f"counters can only increase, got {amount!r}")
        self._value += amount

    @property
    def value(self) -> float:
        return self._value


class GaugeChild:
    """One gauge series."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._value -= amount

    def set(self, value: float) -> None:
        self._value = float(value)

    @property
    def value(self) -> float:
        return self._value


class HistogramChild:
    """One histogram series: counts each observation into exactly one bucket; the
    counts become cumulative only in :meth:`snapshot`, keeping ``observe`` O(log n).
    Beside the buckets, a quantile sketch (since start and recent) that only the JSON
    snapshot reads: the text exposition stays vLLM's."""

    __slots__ = ("_bounds", "_counts", "_sketch", "_sum")

    def __init__(self, bounds: tuple[float, ...], sketch: WindowedSketch | None = None) -> None:
        self._bounds = bounds
        self._counts = [0] * len(bounds)
        self._sum = 0.0
        self._sketch = sketch if sketch is not None else WindowedSketch(time.monotonic)

    def observe(self, value: float, now: float | None = None) -> None:
        """``now``: the sketch's clock reading, when the caller has one (saves a read)."""
        # bisect_left finds the first bound >= value: Prometheus buckets are "le".
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value
        self._sketch.add(value, now)

    def snapshot(self) -> HistogramValue:
        cumulative = []
        running = 0
        for count in self._counts:
            running += count
            cumulative.append(running)
        return HistogramValue(self._bounds, tuple(cumulative), self._sum, self._sketch.view())


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Metric(Generic[ChildT]):
    """A parent metric: a name, help text, label names and the children by label values."""

    _type: ClassVar[MetricType]
    _reserved_labels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
            if label in self._reserved_labels:
                raise ValueError(f"label name {label!r} is reserved for {self._type}s")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}: {labelnames!r}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], ChildT] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    @property
    def exposed_name(self) -> str:
        return self.name

    @property
    def names(self) -> tuple[str, ...]:
        """Every sample name this metric exposes (used to reject duplicates)."""
        return (self.exposed_name,)

    def labels(self, *values: object, **kwvalues: object) -> ChildT:
        """The child for these label values (positional in declared order, or by name);
        names are checked exactly, values are stringified, children are cached."""
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if values and kwvalues:
            raise ValueError("pass label values either by position or by name, not both")
        if kwvalues:
            if set(kwvalues) != set(self.labelnames):
                raise ValueError(
                    f"{self.name} takes labels {sorted(self.labelnames)}, got {sorted(kwvalues)}"
                )
            key = tuple(str(kwvalues[label]) for label in self.labelnames)
        else:
            if len(values) != len(self.labelnames):
                raise ValueError(
                    f"{self.name} takes {len(self.labelnames)} label values, got {len(values)}"
                )
            key = tuple(str(value) for value in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _unlabelled(self) -> ChildT:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...) first")
        return self._children[()]

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def _sample_value(self, child: ChildT) -> float | HistogramValue:
        raise NotImplementedError

    def collect(self) -> Iterable[MetricFamily]:
        samples = tuple(
            Sample(tuple(zip(self.labelnames, key, strict=True)), self._sample_value(child))
            for key, child in self._children.items()
        )
        return (MetricFamily(self.exposed_name, self._type, self.documentation, samples),)


class Counter(_Metric[CounterChild]):
    """A monotonically increasing count. Exposed as ``<name>_total``, as prometheus_client
    (and so vLLM) does: a code name already ending in ``_total`` is exposed unchanged."""

    _type = "counter"

    @property
    def exposed_name(self) -> str:
        return self.name if self.name.endswith("_total") else self.name + "_total"

    @property
    def names(self) -> tuple[str, ...]:
        return (self.exposed_name, self.exposed_name.removesuffix("_total"))

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _sample_value(self, child: CounterChild) -> float:
        return child.value


class Gauge(_Metric[GaugeChild]):
    """A value that goes up and down."""

    _type = "gauge"

    def inc(self, amount: float = 1.0) -> None:
        self._unlabelled().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._unlabelled().dec(amount)

    def set(self, value: float) -> None:
        self._unlabelled().set(value)

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _sample_value(self, child: GaugeChild) -> float:
        return child.value


class Histogram(_Metric[HistogramChild]):
    """Observations counted into explicit buckets (sorted, finite); ``+Inf`` is appended.

    Each series keeps a quantile sketch too (:mod:`.sketch`): ``integer_valued`` says the
    values are counts, read back exactly; ``clock`` moves its recent window (monotonic
    seconds)."""

    _type = "histogram"
    _reserved_labels = frozenset({"le"})

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = (),
        *,
        integer_valued: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if not bounds:
            raise ValueError(f"{name} needs at least one bucket")
        if any(math.isnan(b) for b in bounds) or bounds != sorted(bounds):
            raise ValueError(f"buckets of {name} must be sorted numbers: {list(buckets)!r}")
        if len(set(bounds)) != len(bounds):
            raise ValueError(f"buckets of {name} must be distinct: {list(buckets)!r}")
        if bounds[-1] != _INF:
            bounds.append(_INF)
        self.upper_bounds = tuple(bounds)
        self.integer_valued = integer_valued
        self._clock = clock
        super().__init__(name, documentation, labelnames)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.name + suffix for suffix in ("", "_bucket", "_count", "_sum"))

    def observe(self, value: float) -> None:
        self._unlabelled().observe(value)

    def _new_child(self) -> HistogramChild:
        sketch = WindowedSketch(self._clock, integers=self.integer_valued)
        return HistogramChild(self.upper_bounds, sketch)

    def _sample_value(self, child: HistogramChild) -> HistogramValue:
        return child.snapshot()
