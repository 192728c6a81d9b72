"""Which of the engine's families join the proxy's on /metrics, and how: pure, no I/O.

Taken: vLLM's families that only the engine knows (KV-cache usage, preemptions, prefix-cache
hits, …) and its gauges, under the engine's own labels. Never taken: what the proxy counts
too (``families.COUNTED_BY_BOTH``), anything outside vLLM's namespace, and ``X_created``,
which belongs to ``X`` and is never emitted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from metrics_proxy.families import COUNTED_BY_BOTH, ENGINE_NAMESPACE
from metrics_proxy.prometheus.samples import LabelPairs, MetricFamily
from metrics_proxy.prometheus.text_parser import TextFamily, TextSample, names_of

# Given to an engine series that would otherwise repeat one of the proxy's exactly: vLLM prints
# vllm:admission_rejections_total without an engine label, and so does the proxy.
SOURCE_LABEL = ("source", "engine")


@dataclass(frozen=True, slots=True)
class Joined:
    """The engine's families to print beside the proxy's, and how many were left out for a
    clash with the proxy's (a type of their own for a shared name, or the proxy's sample
    names)."""

    families: tuple[TextFamily, ...]
    conflicts: int = 0


def join(ours: Sequence[MetricFamily], engine: Sequence[TextFamily]) -> Joined:
    """The families of ``engine`` that may be printed with ``ours``, cleared of clashes."""
    by_name = {family.name: family for family in ours}
    our_sample_names = set(_sample_names(ours))
    engine_names = {family.name for family in engine}
    kept: list[TextFamily] = []
    conflicts = 0
    for family in engine:
        if not is_taken(family.name, engine_names):
            continue
        mine = by_name.get(family.name)
        if mine is None and our_sample_names.isdisjoint(names_of(family.name, family.type)):
            kept.append(family)
        elif mine is not None and mine.type == family.type:
            kept.append(_beside(family, mine))
        else:
            conflicts += 1
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


def _beside(family: TextFamily, mine: MetricFamily) -> TextFamily:
    """``family``'s samples as they may stand in ``mine``'s block: one that would repeat a
    series of the proxy's (same labels) is told apart by ``source="engine"``; one that
    cannot be, left out."""
    taken = {_series_key(sample.labels) for sample in mine.samples}
    samples: list[TextSample] = []
    seen: set[tuple[str, LabelPairs]] = set()
    for sample in family.samples:
        labels = sample.labels
        if _series_key(labels) in taken:
            if any(name == SOURCE_LABEL[0] for name, _ in labels):
                continue
            labels = (*labels, SOURCE_LABEL)
        key = (sample.name, tuple(sorted(labels)))
        if key not in seen:
            seen.add(key)
            samples.append(TextSample(sample.name, labels, sample.value))
    return TextFamily(family.name, family.type, family.help, tuple(samples))


def _series_key(labels: LabelPairs) -> LabelPairs:
    # A histogram's series is its labels without le: its buckets clash or not together.
    return tuple(sorted(pair for pair in labels if pair[0] != "le"))
