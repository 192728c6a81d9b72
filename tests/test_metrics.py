"""Counter, Gauge, Histogram and the registry, through their public surface."""

from __future__ import annotations

import math

import pytest

from metrics_proxy.prometheus import (
    Counter,
    Gauge,
    Histogram,
    HistogramValue,
    MetricFamily,
    Registry,
    Sample,
)


def only_family(metric: Counter | Gauge | Histogram) -> MetricFamily:
    (family,) = metric.collect()
    return family


def test_counter_counts_and_is_exposed_with_total_suffix() -> None:
    c = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
    c.inc()
    c.inc(2.5)
    family = only_family(c)
    assert family.name == "vllm:prompt_tokens_total"
    assert family.type == "counter"
    assert family.samples == (Sample((), 3.5),)


def test_counter_name_already_ending_in_total_is_kept() -> None:
    assert only_family(Counter("http_requests_total", "h")).name == "http_requests_total"


def test_counter_rejects_negative_increments() -> None:
    c = Counter("c", "h")
    with pytest.raises(ValueError, match="only increase"):
        c.inc(-1)
    assert only_family(c).samples[0].value == 0.0


def test_gauge_moves_both_ways() -> None:
    g = Gauge("g", "h")
    g.inc()
    g.inc(3)
    g.dec(2)
    assert only_family(g).samples[0].value == 2.0
    g.set(-7)
    assert only_family(g).samples[0].value == -7.0


def test_labels_are_checked_exactly_and_children_cached() -> None:
    c = Counter("c", "h", ("model_name", "engine"))
    child = c.labels("m", "0")
    assert c.labels(model_name="m", engine="0") is child
    assert c.labels(engine="0", model_name="m") is child
    with pytest.raises(ValueError, match="takes labels"):
        c.labels(model_name="m")
    with pytest.raises(ValueError, match="takes labels"):
        c.labels(model_name="m", engine="0", extra="x")
    with pytest.raises(ValueError, match="label values"):
        c.labels("m")
    with pytest.raises(ValueError, match="either by position or by name"):
        c.labels("m", engine="0")


def test_label_values_are_stringified_and_series_keep_creation_order() -> None:
    g = Gauge("g", "h", ("rank",))
    g.labels(1).set(1)
    g.labels("0").set(2)
    assert only_family(g).samples == (
        Sample((("rank", "1"),), 1.0),
        Sample((("rank", "0"),), 2.0),
    )


def test_a_parent_with_labels_cannot_be_changed_directly() -> None:
    c = Counter("c", "h", ("a",))
    with pytest.raises(ValueError, match=r"use \.labels"):
        c.inc()
    g = Gauge("g", "h", ("a",))
    with pytest.raises(ValueError, match=r"use \.labels"):
        g.set(1)
    h = Histogram("h", "h", ("a",), (1.0,))
    with pytest.raises(ValueError, match=r"use \.labels"):
        h.observe(1)


def test_unlabelled_metric_refuses_labels() -> None:
    with pytest.raises(ValueError, match="no labels"):
        Counter("c", "h").labels()


@pytest.mark.parametrize("name", ["", "1abc", "a-b", "a b"])
def test_invalid_metric_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter(name, "h")


@pytest.mark.parametrize("labels", [("a-b",), ("__x",), ("a", "a")])
def test_invalid_label_names_are_rejected(labels: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="label name"):
        Counter("c", "h", labels)


def test_histogram_counts_into_le_buckets_and_accumulates_on_collect() -> None:
    h = Histogram("h", "help", (), (1.0, 2.0, 5.0))
    for value in (0.5, 1.0, 1.5, 2.0, 3.0, 7.0):
        h.observe(value)
    (sample,) = only_family(h).samples
    assert sample.value == HistogramValue(
        (1.0, 2.0, 5.0, math.inf), (2, 4, 5, 6), 0.5 + 1.0 + 1.5 + 2.0 + 3.0 + 7.0
    )
    assert isinstance(sample.value, HistogramValue)
    assert sample.value.count == 6


def test_histogram_bucket_validation() -> None:
    with pytest.raises(ValueError, match="sorted"):
        Histogram("h", "h", (), (2.0, 1.0))
    with pytest.raises(ValueError, match="distinct"):
        Histogram("h", "h", (), (1.0, 1.0))
    with pytest.raises(ValueError, match="at least one"):
        Histogram("h", "h", (), ())
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "h", ("le",), (1.0,))
    assert Histogram("h", "h", (), (1, math.inf)).upper_bounds == (1.0, math.inf)


def test_snapshot_is_immutable_and_detached_from_later_changes() -> None:
    h = Histogram("h", "h", (), (1.0,))
    h.observe(0.5)
    family = only_family(h)
    h.observe(0.5)
    value = family.samples[0].value
    assert isinstance(value, HistogramValue)
    assert value.count == 1
    with pytest.raises(AttributeError):
        family.name = "x"  # type: ignore[misc]


def test_registry_rejects_duplicates_and_collects_in_order() -> None:
    registry = Registry()
    registry.register(Gauge("b", "h"))
    registry.register(Counter("a", "h"))
    with pytest.raises(ValueError, match="duplicate"):
        registry.register(Gauge("b", "other"))
    with pytest.raises(ValueError, match="duplicate"):
        registry.register(Gauge("a_total", "clashes with the counter"))
    with pytest.raises(ValueError, match="duplicate"):
        registry.register(Histogram("a", "clashes with the counter's base name", (), (1.0,)))
    assert [f.name for f in registry.collect()] == ["b", "a_total"]
