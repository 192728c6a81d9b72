"""Which of the engine's families join the proxy's on /metrics, and how: pure, no I/O.

Taken: vLLM's families that only the engine knows (KV-cache usage, preemptions, prefix-cache
hits, …) and its gauges, under exactly the engine's own labels, but for ``origin="engine"``
on the families in ``families.MARKED_WITH_ORIGIN``; none repeats a series of the proxy's.
Never taken: what the proxy counts too (``families.COUNTED_BY_BOTH``), anything outside
vLLM's namespace, and ``X_created``, which belongs to ``X`` and is never emitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metrics_proxy.families import (
    COUNTED_BY_BOTH,
    ENGINE_NAMESPACE,
    ENGINE_ORIGIN,
    MARKED_WITH_ORIGIN,
)
from metrics_proxy.prometheus.samples import MetricFamily
from metrics_proxy.prometheus.text_parser import TextFamily, TextSample, names_of

# A series as printed: its sample name and its label set, in any order.
_SeriesKey = tuple[str, frozenset[tuple[str, str]]]


@dataclass(frozen=True, slots=True)
class Joined:
    """The engine's families to print beside the proxy's, and how many families and series
    were left out for a clash with the proxy's (a type of their own for a name both print,
    the proxy's sample names, one of the proxy's series exactly, an ``origin`` label of their
    own where the engine's series get one)."""

    families: tuple[TextFamily, ...]
    conflicts: int = 0


def join(ours: Sequence[MetricFamily], engine: Sequence[TextFamily]) -> Joined:
    """The families of ``engine`` that may be printed with ``ours``, cleared of clashes."""
    types = {family.name: family.type for family in ours}
    our_sample_names = set(_sample_names(ours))
    our_series = set(_series_keys(ours))
    engine_names = {family.name for family in engine}
    kept: list[TextFamily] = []
    conflicts = 0
    for family in engine:
        if not is_taken(family.name, engine_names):
            continue
        if family.name in types:
            clash = types[family.name] != family.type  # one block holds one type
        else:  # nor may it print a name of ours
            clash = not our_sample_names.isdisjoint(names_of(family.name, family.type))
        if clash:
            conflicts += 1
        else:
            cleared = _cleared(family, our_series)
            conflicts += len(family.samples) - len(cleared.samples)
            if cleared.samples:
                kept.append(cleared)
    return Joined(tuple(kept), conflicts)


def is_taken(name: str, engine_names: Iterable[str] = ()) -> bool:
    """Whether the engine's family ``name`` joins the proxy's (``engine_names``: every family
    the engine printed, to tell an ``X_created`` from a gauge that happens to end so)."""
    if not name.startswith(ENGINE_NAMESPACE) or name in COUNTED_BY_BOTH:
        return False
    if name.endswith("_created"):
        owner = name.removesuffix("_created")
        return not {owner, owner + "_total"}.intersection(engine_names)
    return True


def _sample_names(families: Iterable[MetricFamily]) -> Iterable[str]:
    for family in families:
        yield from names_of(family.name, family.type)


def _series_keys(families: Iterable[MetricFamily]) -> Iterable[_SeriesKey]:
    # Histograms need no keys: the proxy's are never taken from the engine (COUNTED_BY_BOTH),
    # and an engine family of another type under their names is a conflict already.
    for family in families:
        if family.type != "histogram":
            yield from ((family.name, frozenset(s.labels)) for s in family.samples)


def _cleared(family: TextFamily, ours: set[_SeriesKey]) -> TextFamily:
    """``family``'s series as the engine wrote them, but with ``origin="engine"`` where the
    family is marked (there a series with an origin label of its own is left out), and
    without any that would print exactly as one of the proxy's (``ours``), which wins."""
    samples = family.samples
    if family.name in MARKED_WITH_ORIGIN:
        name = ENGINE_ORIGIN[0]
        samples = tuple(
            TextSample(sample.name, (*sample.labels, ENGINE_ORIGIN), sample.value)
            for sample in samples
            if all(label != name for label, _ in sample.labels)
        )
    kept = tuple(s for s in samples if (s.name, frozenset(s.labels)) not in ours)
    return TextFamily(family.name, family.type, family.help, kept)
