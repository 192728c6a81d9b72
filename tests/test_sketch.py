"""The quantile sketch beside every histogram: within 1 % of the exact nearest-rank quantile of
the values observed, exact for zero and small counts, mergeable, and a recent window that
moves with an injected clock (no sleeps)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.prometheus import Histogram, render_text, snapshot_dict
from metrics_proxy.prometheus.sketch import WindowedSketch, key_of, merge, quantiles
from tests.support.stack import Stack

QS = (0.5, 0.9, 0.99)
# The sketch promises 1 %; the float arithmetic of a key's edges may add a hair.
ACCURACY = 0.01 + 1e-9


class Clock:
    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def nearest_rank(values: list[float], q: float) -> float:
    """The exact sample quantile: the smallest value with at least q of them at or below."""
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(str(q)) * len(ordered)))
    return ordered[rank - 1]


def sketched(values: list[float], *, integers: bool = False) -> list[float | None]:
    store: dict[int, int] = {}
    for value in values:
        store[key_of(value)] = store.get(key_of(value), 0) + 1
    return quantiles(store, QS, integers=integers)


def _draw(name: str, rng: random.Random, size: int) -> list[float]:
    draws: dict[str, Callable[[], float]] = {
        "uniform latency": lambda: rng.uniform(0.001, 2.0),
        "lognormal ttft": lambda: rng.lognormvariate(-3.0, 1.5),
        "exponential itl": lambda: rng.expovariate(40.0),
        # Heavy tails: p99 far beyond p50, where coarse buckets fail worst.
        "pareto": lambda: rng.paretovariate(1.1) * 0.01,
        "cauchy magnitude": lambda: abs(rng.gauss(0, 1) / rng.gauss(0, 1)) + 1e-6,
        "microseconds": lambda: rng.uniform(1e-7, 5e-6),
        "bimodal": lambda: rng.choice((0.002, 30.0)) * rng.uniform(0.9, 1.1),
        "with zeros (TPOT of one-token answers)": lambda: rng.choice((0.0, 0.0, 0.04)),
        "constant e2e 1.8 ms": lambda: 0.0018,
    }
    return [draws[name]() for _ in range(size)]


DISTRIBUTIONS = (
    "uniform latency",
    "lognormal ttft",
    "exponential itl",
    "pareto",
    "cauchy magnitude",
    "microseconds",
    "bimodal",
    "with zeros (TPOT of one-token answers)",
    "constant e2e 1.8 ms",
)


@pytest.mark.parametrize("size", [1, 2, 7, 100, 5000])
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_quantiles_are_within_one_percent_of_the_exact_nearest_rank(name: str, size: int) -> None:
    values = _draw(name, random.Random(f"{name}/{size}"), size)
    for q, estimate in zip(QS, sketched(values), strict=True):
        truth = nearest_rank(values, q)
        assert estimate is not None
        assert abs(estimate - truth) <= ACCURACY * truth, (q, estimate, truth)


@pytest.mark.parametrize(
    "values",
    [
        [1] * 9,  # n=1 on every request
        [1, 1, 1, 2, 4],
        [0, 0, 3],
        list(range(1, 50)),
        [7] + [48] * 200,
    ],
)
def test_small_counts_come_back_as_the_exact_integers(values: list[int]) -> None:
    exact = [float(nearest_rank([float(v) for v in values], q)) for q in QS]
    assert sketched([float(v) for v in values], integers=True) == exact


def test_large_counts_stay_within_one_percent() -> None:
    values = [float(v) for v in random.Random(5).choices(range(50, 131_072), k=3000)]
    for q, estimate in zip(QS, sketched(values, integers=True), strict=True):
        truth = nearest_rank(values, q)
        assert estimate is not None
        assert abs(estimate - truth) <= ACCURACY * truth


def test_zero_and_infinity_are_exact_and_an_empty_sketch_has_no_quantiles() -> None:
    assert sketched([0.0, 0.0, 0.0]) == [0.0, 0.0, 0.0]
    assert sketched([1.0, math.inf, math.inf]) == [math.inf] * 3
    assert quantiles({}, QS) == [None, None, None]


def test_merged_stores_answer_as_one_sketch_of_all_the_values() -> None:
    rng = random.Random(11)
    parts = [_draw("lognormal ttft", rng, 300) for _ in range(4)]
    stores = []
    for part in parts:
        sketch = WindowedSketch(Clock())
        for value in part:
            sketch.add(value)
        stores.append(sketch.view().since_start())
    everything = [v for part in parts for v in part]
    assert quantiles(merge(stores), QS) == sketched(everything)


# --- the recent window, with an injected clock ------------------------------------------------


def _window_count(sketch: WindowedSketch) -> int:
    return sum(sketch.view().in_window().values())


def test_an_observation_leaves_the_window_after_a_minute_but_stays_since_start() -> None:
    clock = Clock(1000.0)  # the interval [1000, 1005) of twelve 5-second ones
    sketch = WindowedSketch(clock)
    sketch.add(0.25)
    clock.now = 1059.9
    assert _window_count(sketch) == 1
    clock.now = 1060.0  # its interval is now the thirteenth: gone, on a read alone
    assert _window_count(sketch) == 0
    assert sum(sketch.view().since_start().values()) == 1


def test_the_window_reports_the_last_minute_and_since_start_everything() -> None:
    clock = Clock()
    sketch = WindowedSketch(clock)
    for second in range(120):  # a slow first minute, then a fast one
        clock.now = float(second)
        for _ in range(3):
            sketch.add(2.0 if second < 60 else 0.1)
    clock.now = 119.5  # the window: the intervals from [60, 65) to [115, 120)
    view = sketch.view()
    recent = quantiles(view.in_window(), QS)
    assert recent == pytest.approx([0.1, 0.1, 0.1], rel=0.01)
    assert sum(view.in_window().values()) == 180
    clock.now = 120.0  # [60, 65) leaves as [120, 125) begins
    assert sum(sketch.view().in_window().values()) == 165
    assert quantiles(view.since_start(), (0.25, 0.75)) == pytest.approx([0.1, 2.0], rel=0.01)


def test_a_long_silence_or_a_clock_that_steps_back_keeps_every_count() -> None:
    clock = Clock(50.0)
    sketch = WindowedSketch(clock)
    sketch.add(1.0)
    clock.now = 1e6  # days later: every interval in between skipped at once
    sketch.add(3.0)
    assert _window_count(sketch) == 1
    clock.now = 10.0  # an injected clock that steps back: counted in the current interval
    sketch.add(5.0)
    view = sketch.view()
    assert sum(view.in_window().values()) == 2
    assert sum(view.since_start().values()) == 3


def test_a_view_is_not_changed_by_later_observations_or_expiry() -> None:
    clock = Clock()
    sketch = WindowedSketch(clock)
    sketch.add(1.0)
    clock.now = 7.0
    sketch.add(2.0)
    view = sketch.view()
    before = (view.since_start(), view.in_window())
    for now in (8.0, 70.0, 200.0):
        clock.now = now
        sketch.add(9.0)
        sketch.view()
    assert (view.since_start(), view.in_window()) == before


def test_a_histogram_keeps_a_sketch_per_series_that_text_never_shows() -> None:
    clock = Clock()
    h = Histogram("h_seconds", "h", ("model_name",), (0.3, 1.0), clock=clock)
    h.labels("m").observe(0.0018)
    text = render_text(h.collect()).decode()
    assert text.splitlines()[2:] == [
        'h_seconds_bucket{le="0.3",model_name="m"} 1.0',
        'h_seconds_bucket{le="1.0",model_name="m"} 1.0',
        'h_seconds_bucket{le="+Inf",model_name="m"} 1.0',
        'h_seconds_count{model_name="m"} 1.0',
        'h_seconds_sum{model_name="m"} 0.0018',
    ]
    (family,) = snapshot_dict(h.collect())["families"]
    (sample,) = family["samples"]
    # PromQL would say 0.15 s from the bucket (0, 0.3]; the sketch says 1.8 ms.
    assert sample["p50"] == pytest.approx(0.0018, rel=0.01)
    clock.now = 61.0
    (family,) = snapshot_dict(h.collect())["families"]
    assert family["samples"][0]["recent"]["count"] == 0
    assert family["samples"][0]["count"] == 1


# --- the recorder's JSON snapshot -----------------------------------------------------------


def _sample(snapshot: dict[str, Any], name: str) -> dict[str, Any]:
    (family,) = [f for f in snapshot["families"] if f["name"] == name]
    sample: dict[str, Any] = family["samples"][0]
    return sample


def test_the_snapshot_gives_true_quantiles_since_start_and_for_the_last_minute() -> None:
    clock = Clock(500.0)
    recorder = ProxyMetricsRecorder("m", process_metrics=False, clock=clock)
    for e2e in (0.0018, 0.0018, 0.0018, 4.0):
        request = recorder.start_request()
        request.slot_acquired()
        clock.now += e2e
        request.finish("stop", prompt_tokens=10, generation_tokens=1)
    e2e_sample = _sample(recorder.snapshot(), "vllm:e2e_request_latency_seconds")
    assert e2e_sample["p50"] == pytest.approx(0.0018, rel=0.01)
    assert e2e_sample["p99"] == pytest.approx(4.0, rel=0.01)
    assert e2e_sample["recent"]["count"] == 4
    n_sample = _sample(recorder.snapshot(), "vllm:request_params_n")
    assert (n_sample["p50"], n_sample["p99"]) == (1.0, 1.0)  # not the buckets' 0.5
    clock.now += 60.0
    e2e_sample = _sample(recorder.snapshot(), "vllm:e2e_request_latency_seconds")
    assert e2e_sample["recent"] == {
        "seconds": 60.0,
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
    }
    assert e2e_sample["p50"] == pytest.approx(0.0018, rel=0.01)


async def test_the_proxys_snapshot_reports_n_1_as_1(stack: Stack) -> None:
    response = await stack.client.post(
        "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 5}
    )
    assert response.status == 200
    await response.read()
    sample = await stack.value("vllm:request_params_n")
    assert sample["count"] == 1
    assert (sample["p50"], sample["p90"], sample["p99"]) == (1.0, 1.0, 1.0)
    assert sample["recent"]["p50"] == 1.0
    tokens = await stack.value("vllm:request_params_max_tokens")
    assert tokens["p50"] == 5.0
