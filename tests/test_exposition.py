"""Text and JSON rendering: exact expected output for each metric type."""

from __future__ import annotations

import math

import orjson
import pytest

from metrics_proxy.prometheus import (
    CONTENT_TYPE_TEXT,
    Counter,
    Gauge,
    Histogram,
    HistogramValue,
    Registry,
    bucket_quantile,
    format_value,
    render_json,
    render_text,
    snapshot_dict,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0.0"),
        (3.0, "3.0"),
        (0.25, "0.25"),
        (5000.0, "5000.0"),
        (500000.0, "500000.0"),
        (1e6, "1e+06"),
        (2e6, "2e+06"),
        (1795728323.4968863, "1.7957283234968863e+09"),
        (1e10, "1e+010"),  # prometheus_client's quirk, reproduced for parity
        (1e16, "1e+16"),
        (-1.5, "-1.5"),
        (-2e6, "-2000000.0"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_numbers_print_as_vllm_prints_them(value: float, text: str) -> None:
    assert format_value(value) == text


def test_content_type_is_text_format_0_0_4() -> None:
    assert CONTENT_TYPE_TEXT == "text/plain; version=0.0.4; charset=utf-8"


def test_counter_text() -> None:
    c = Counter("vllm:request_success", "Count.", ("model_name", "finished_reason", "engine"))
    c.labels("m", "stop", "0").inc()
    c.labels("m", "length", "0")
    assert render_text(c.collect()).decode() == (
        "# HELP vllm:request_success_total Count.\n"
        "# TYPE vllm:request_success_total counter\n"
        'vllm:request_success_total{engine="0",finished_reason="stop",model_name="m"} 1.0\n'
        'vllm:request_success_total{engine="0",finished_reason="length",model_name="m"} 0.0\n'
    )


def test_gauge_text_without_labels() -> None:
    g = Gauge("up_things", "How many.")
    g.set(2)
    assert render_text(g.collect()) == (
        b"# HELP up_things How many.\n# TYPE up_things gauge\nup_things 2.0\n"
    )


def test_histogram_text_puts_le_in_sorted_place_and_count_before_sum() -> None:
    h = Histogram("vllm:x_seconds", "X.", ("model_name", "engine"), (0.5, 1.0, 1e6))
    child = h.labels("m", "0")
    child.observe(0.25)
    child.observe(3.0)
    assert render_text(h.collect()).decode() == (
        "# HELP vllm:x_seconds X.\n"
        "# TYPE vllm:x_seconds histogram\n"
        'vllm:x_seconds_bucket{engine="0",le="0.5",model_name="m"} 1.0\n'
        'vllm:x_seconds_bucket{engine="0",le="1.0",model_name="m"} 1.0\n'
        'vllm:x_seconds_bucket{engine="0",le="1e+06",model_name="m"} 2.0\n'
        'vllm:x_seconds_bucket{engine="0",le="+Inf",model_name="m"} 2.0\n'
        'vllm:x_seconds_count{engine="0",model_name="m"} 2.0\n'
        'vllm:x_seconds_sum{engine="0",model_name="m"} 3.25\n'
    )


def test_help_and_label_values_are_escaped() -> None:
    g = Gauge("g", 'Back\\slash and\nnewline "quotes" stay', ("path",))
    g.labels('a"b\\c\nd').set(1)
    assert render_text(g.collect()).decode() == (
        '# HELP g Back\\\\slash and\\nnewline "quotes" stay\n'
        "# TYPE g gauge\n"
        'g{path="a\\"b\\\\c\\nd"} 1.0\n'
    )


def test_empty_registry_renders_empty_text() -> None:
    assert render_text(Registry().collect()) == b""


def test_json_snapshot_round_trip() -> None:
    registry = Registry()
    c = Counter("c", "A counter.", ("model_name",))
    h = Histogram("h_seconds", "A histogram.", ("model_name",), (1.0, 2.0, 4.0))
    g = Gauge("g", "A gauge.")
    for metric in (c, h, g):
        registry.register(metric)
    c.labels("m").inc(3)
    for value in (0.5, 1.5, 1.5, 3.0):
        h.labels("m").observe(value)
    g.set(math.inf)
    families = registry.collect()
    decoded = orjson.loads(render_json(families))
    assert decoded == snapshot_dict(families)
    assert decoded == {
        "families": [
            {
                "name": "c_total",
                "type": "counter",
                "help": "A counter.",
                "samples": [{"labels": {"model_name": "m"}, "value": 3.0}],
            },
            {
                "name": "h_seconds",
                "type": "histogram",
                "help": "A histogram.",
                "samples": [
                    {
                        "labels": {"model_name": "m"},
                        "buckets": [[1.0, 1], [2.0, 3], [4.0, 4]],
                        "count": 4,
                        "sum": 6.5,
                        "mean": 1.625,
                        # Nearest-rank quantiles of the values, from the sketch (within 1 %).
                        "p50": pytest.approx(1.5, rel=0.01),
                        "p90": pytest.approx(3.0, rel=0.01),
                        "p99": pytest.approx(3.0, rel=0.01),
                        "recent": {
                            "seconds": 60.0,
                            "count": 4,
                            "p50": pytest.approx(1.5, rel=0.01),
                            "p90": pytest.approx(3.0, rel=0.01),
                            "p99": pytest.approx(3.0, rel=0.01),
                        },
                    }
                ],
            },
            {
                "name": "g",
                "type": "gauge",
                "help": "A gauge.",
                "samples": [{"labels": {}, "value": "+Inf"}],
            },
        ]
    }


def test_a_registry_renders_and_snapshots_itself() -> None:
    registry = Registry()
    c = Counter("c", "A counter.", ("model_name",))
    h = Histogram("h_seconds", "A histogram.", ("model_name",), (1.0, 2.0))
    registry.register(c)
    registry.register(h)
    c.labels("m").inc(2)
    h.labels("m").observe(1.5)
    families = registry.collect()
    assert registry.snapshot() == snapshot_dict(families)
    assert render_json(registry) == render_json(families)
    assert render_text(registry) == render_text(families)


def test_empty_histogram_has_no_quantiles() -> None:
    h = Histogram("h", "h", (), (1.0,))
    (family,) = snapshot_dict(h.collect())["families"]
    assert family["samples"][0] == {
        "labels": {},
        "buckets": [[1.0, 0]],
        "count": 0,
        "sum": 0.0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "recent": {"seconds": 60.0, "count": 0, "p50": None, "p90": None, "p99": None},
    }


def test_quantile_follows_promql_rules() -> None:
    value = HistogramValue((1.0, 2.0, math.inf), (0, 10, 12), 20.0)
    # Rank 6 of 12 lies in (1, 2], 6 of its 10 observations in: 1 + 0.6.
    assert bucket_quantile(0.5, value) == pytest.approx(1.6)
    # Ranks in +Inf report the highest finite bound, as histogram_quantile does.
    assert bucket_quantile(0.99, value) == 2.0
    assert bucket_quantile(0.0, HistogramValue((1.0, math.inf), (4, 4), 1.0)) == 0.0
