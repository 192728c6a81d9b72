"""The JSON snapshot's structure (schema in the README): plain data, serialised elsewhere."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from metrics_proxy.prometheus.samples import HistogramValue, MetricFamily, bucket_quantile
from metrics_proxy.prometheus.sketch import quantiles

SNAPSHOT_QUANTILES = (0.5, 0.9, 0.99)
_QUANTILE_KEYS = tuple(f"p{round(q * 100)}" for q in SNAPSHOT_QUANTILES)


def _json_number(value: float) -> float | str:
    # JSON has no infinities or NaN: those travel as the strings Prometheus uses.
    if math.isfinite(value):
        return value
    if value != value:
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _quantile_entries(estimates: Iterable[float | None]) -> dict[str, float | str | None]:
    return {
        key: None if x is None else _json_number(x)
        for key, x in zip(_QUANTILE_KEYS, estimates, strict=True)
    }


def _histogram_entry(value: HistogramValue) -> dict[str, Any]:
    count = value.count
    entry: dict[str, Any] = {
        "buckets": [
            [bound, cumulative]
            for bound, cumulative in zip(
                value.upper_bounds[:-1], value.cumulative_counts[:-1], strict=True
            )
        ],
        "count": count,
        "sum": _json_number(value.sum),
        "mean": value.sum / count if count else None,
    }
    sketch = value.sketch
    if sketch is None:  # a value built by hand: the buckets are all there is
        entry.update(_quantile_entries(bucket_quantile(q, value) for q in SNAPSHOT_QUANTILES))
        return entry
    window = sketch.in_window()
    recent = quantiles(window, SNAPSHOT_QUANTILES, integers=sketch.integers)
    # Until anything leaves the window, the window is everything since start.
    overall = (
        quantiles(sketch.since_start(), SNAPSHOT_QUANTILES, integers=sketch.integers)
        if sketch.expired
        else recent
    )
    entry.update(_quantile_entries(overall))
    entry["recent"] = {
        "seconds": sketch.window_seconds,
        "count": sum(window.values()),
        **_quantile_entries(recent),
    }
    return entry


def snapshot_dict(families: Iterable[MetricFamily]) -> dict[str, Any]:
    """Every family and its samples as JSON-ready dicts, in collection order."""
    out = []
    for family in families:
        samples: list[dict[str, Any]] = []
        for sample in family.samples:
            value = sample.value
            entry: dict[str, Any] = {"labels": dict(sample.labels)}
            if isinstance(value, HistogramValue):
                entry.update(_histogram_entry(value))
            else:
                entry["value"] = _json_number(value)
            samples.append(entry)
        out.append(
            {"name": family.name, "type": family.type, "help": family.help, "samples": samples}
        )
    return {"families": out}
