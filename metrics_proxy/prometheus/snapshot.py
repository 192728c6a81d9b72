"""The JSON snapshot's structure (schema in the README): plain data, serialised elsewhere."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from metrics_proxy.prometheus.samples import HistogramValue, MetricFamily, bucket_quantile

SNAPSHOT_QUANTILES = (0.5, 0.9, 0.99)


def _json_number(value: float) -> float | str:
    # JSON has no infinities or NaN: those travel as the strings Prometheus uses.
    if math.isfinite(value):
        return value
    if value != value:
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def snapshot_dict(families: Iterable[MetricFamily]) -> dict[str, Any]:
    """Every family and its samples as JSON-ready dicts, in collection order."""
    out = []
    for family in families:
        samples: list[dict[str, Any]] = []
        for sample in family.samples:
            value = sample.value
            entry: dict[str, Any] = {"labels": dict(sample.labels)}
            if isinstance(value, HistogramValue):
                count = value.count
                entry["buckets"] = [
                    [bound, cumulative]
                    for bound, cumulative in zip(
                        value.upper_bounds[:-1], value.cumulative_counts[:-1], strict=True
                    )
                ]
                entry["count"] = count
                entry["sum"] = _json_number(value.sum)
                entry["mean"] = value.sum / count if count else None
                for q in SNAPSHOT_QUANTILES:
                    entry[f"p{round(q * 100)}"] = bucket_quantile(q, value)
            else:
                entry["value"] = _json_number(value)
            samples.append(entry)
        out.append(
            {"name": family.name, "type": family.type, "help": family.help, "samples": samples}
        )
    return {"families": out}
