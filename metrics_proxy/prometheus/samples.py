"""The read-only snapshot that crosses from metrics to output: families of samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from metrics_proxy.prometheus.sketch import SketchView

MetricType = Literal["counter", "gauge", "histogram"]
LabelPairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """One histogram series, already cumulative: ``cumulative_counts[i]`` counts values
    ``<= upper_bounds[i]``; the last bound is ``+Inf``, so the last count is the total.
    ``sketch`` is its quantile sketch as read with the buckets (not part of equality)."""

    upper_bounds: tuple[float, ...]
    cumulative_counts: tuple[int, ...]
    sum: float
    sketch: SketchView | None = field(default=None, compare=False)

    @property
    def count(self) -> int:
        return self.cumulative_counts[-1]


@dataclass(frozen=True, slots=True)
class Sample:
    """One series: its label pairs in the family's declared order, and its value."""

    labels: LabelPairs
    value: float | HistogramValue


@dataclass(frozen=True, slots=True)
class MetricFamily:
    """A metric as exposed: ``name`` is the exposed name (counters carry ``_total``)."""

    name: str
    type: MetricType
    help: str
    samples: tuple[Sample, ...]


def bucket_quantile(q: float, value: HistogramValue) -> float | None:
    """Estimate quantile ``q`` from cumulative buckets the way PromQL's
    ``histogram_quantile`` does: linear interpolation inside the bucket that holds the
    rank, the lowest bucket starting at 0, and the highest finite bound when the rank
    falls in ``+Inf``. ``None`` when the histogram is empty."""
    total = value.count
    if total == 0:
        return None
    rank = q * total
    lower_bound = 0.0
    lower_count = 0
    bounds = value.upper_bounds
    for i, cumulative in enumerate(value.cumulative_counts):
        if cumulative >= rank:
            upper = bounds[i]
            if upper == float("inf"):
                return bounds[i - 1] if i > 0 else 0.0
            in_bucket = cumulative - lower_count
            if in_bucket == 0:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / in_bucket
        lower_bound = bounds[i]
        lower_count = cumulative
    return bounds[-2] if len(bounds) > 1 else 0.0
