"""The registry: holds collectors, rejects duplicate names, collects a snapshot."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from metrics_proxy.prometheus.samples import MetricFamily
from metrics_proxy.prometheus.snapshot import snapshot_dict


class Collector(Protocol):
    """Anything that yields metric families when scraped (metrics, the process collector)."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def collect(self) -> Iterable[MetricFamily]: ...


class Registry:
    """An ordered set of collectors; families are exposed in registration order."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []
        self._names: set[str] = set()

    def register(self, collector: Collector) -> None:
        clashes = self._names.intersection(collector.names)
        if clashes:
            raise ValueError(f"duplicate metric names: {sorted(clashes)}")
        self._names.update(collector.names)
        self._collectors.append(collector)

    def collect(self) -> tuple[MetricFamily, ...]:
        """An immutable snapshot of every family, taken in one pass."""
        return tuple(family for c in self._collectors for family in c.collect())

    def snapshot(self) -> dict[str, Any]:
        """Every family collected now, as the JSON-ready structure (schema in the README)."""
        return snapshot_dict(self.collect())
