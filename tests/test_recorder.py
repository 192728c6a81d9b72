"""ProxyMetricsRecorder: parity with vLLM's own metric definitions, and request accounting."""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.families import FinishedReason, RejectionReason
from metrics_proxy.prometheus import HistogramValue, MetricFamily, render_json, render_text
from metrics_proxy.recorder import MAX_MODEL_NAME, MAX_MODELS

DATA = Path(__file__).parent / "data"
VLLM = json.loads((DATA / "vllm_metrics.json").read_text())
VLLM_BY_NAME: dict[str, dict[str, Any]] = {m["name"]: m for m in VLLM["metrics"]}

# The vLLM families a proxy observes on the wire (exposed names).
OBSERVED = [
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:num_requests_waiting_by_reason",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:admission_rejections_total",
    "vllm:request_prompt_tokens",
    "vllm:request_generation_tokens",
    "vllm:request_max_num_generation_tokens",
    "vllm:request_params_n",
    "vllm:request_params_max_tokens",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
    "vllm:request_inference_time_seconds",
    "vllm:request_prefill_time_seconds",
    "vllm:request_decode_time_seconds",
    "http_requests_total",
    "http_request_duration_highr_seconds",
    "http_request_duration_seconds",
]
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def families(recorder: ProxyMetricsRecorder) -> dict[str, MetricFamily]:
    return {f.name: f for f in recorder.collect()}


def value(recorder: ProxyMetricsRecorder, name: str, **labels: str) -> float | HistogramValue:
    for sample in families(recorder)[name].samples:
        if all(dict(sample.labels).get(k) == v for k, v in labels.items()):
            return sample.value
    raise KeyError((name, labels))


def histogram(recorder: ProxyMetricsRecorder, name: str) -> HistogramValue:
    result = value(recorder, name)
    assert isinstance(result, HistogramValue)
    return result


@pytest.mark.parametrize("max_model_len", [4096, 8192, 1_000_000])
def test_every_observable_family_matches_vllm(max_model_len: int) -> None:
    recorder = ProxyMetricsRecorder(MODEL, engine="0", max_model_len=max_model_len)
    # vLLM's HTTP series appear with the first request, like the instrumentator's.
    recorder.observe_http("/v1/chat/completions", "POST", 200, 0.1)
    ours = families(recorder)
    token_buckets = VLLM["request_tokens_buckets"][str(max_model_len)]
    for name in OBSERVED:
        fact = VLLM_BY_NAME[name]
        family = ours[name]
        assert family.type == fact["type"], name
        assert family.help == fact["help"], name
        assert family.samples, f"{name} has no series at start-up"
        for sample in family.samples:
            assert [k for k, _ in sample.labels] == fact["labels"], name
        if fact["type"] == "histogram":
            expected = (
                token_buckets if fact["bucket_family"] == "request_tokens" else fact["buckets"]
            )
            sample_value = family.samples[0].value
            assert isinstance(sample_value, HistogramValue)
            assert sample_value.upper_bounds == (*map(float, expected), math.inf), name


def test_all_finished_reasons_exist_at_zero_from_start() -> None:
    recorder = ProxyMetricsRecorder(MODEL, engine="0")
    samples = families(recorder)["vllm:request_success_total"].samples
    assert [dict(s.labels)["finished_reason"] for s in samples] == VLLM_BY_NAME[
        "vllm:request_success_total"
    ]["label_values"]["finished_reason"]
    assert {s.value for s in samples} == {0.0}


def _vllm_family_lines(name: str) -> list[str]:
    """The lines of one family (HELP, TYPE, samples; no _created) in vLLM's own output."""
    lines = (DATA / "vllm_0.33_exposition.txt").read_text().splitlines()
    start = lines.index(next(x for x in lines if x.startswith(f"# HELP {name} ")))
    out = lines[start : start + 2]
    for line in lines[start + 2 :]:
        if line.startswith("#"):
            break
        out.append(line)
    return out


def _our_family_lines(recorder: ProxyMetricsRecorder, name: str) -> list[str]:
    return render_text([families(recorder)[name]]).decode().splitlines()


@pytest.mark.parametrize(
    "name",
    [
        "vllm:request_success_total",
        "vllm:prompt_tokens_total",
        "vllm:request_prompt_tokens",
        "vllm:request_params_n",
        "vllm:request_params_max_tokens",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
    ],
)
def test_rendered_text_is_byte_identical_to_vllms_for_the_same_request(name: str) -> None:
    # vLLM's sample holds one request: prompt 100, 5 generated, max_tokens 16, n 1,
    # TTFT 0.05 s. Replay it with the values of the sample and compare whole families.
    clock = Clock()
    recorder = ProxyMetricsRecorder(MODEL, engine="0", max_model_len=8192, clock=clock)
    request = recorder.start_request()
    request.max_tokens = 16
    request.slot_acquired()
    clock.now += 0.05
    request.output()
    expected = _vllm_family_lines(name)
    if name == "vllm:e2e_request_latency_seconds":
        e2e = float(expected[-1].rsplit(" ", 1)[1])
        clock.now = e2e
    request.finish("stop", prompt_tokens=100, generation_tokens=5)
    assert _our_family_lines(recorder, name) == expected


def test_request_lifecycle_settles_gauges_and_observes_intervals() -> None:
    clock = Clock()
    recorder = ProxyMetricsRecorder(MODEL, clock=clock)
    request = recorder.start_request()
    assert value(recorder, "vllm:num_requests_waiting") == 1.0
    assert value(recorder, "vllm:num_requests_waiting_by_reason", reason="capacity") == 1.0
    clock.now += 0.5  # queued
    request.slot_acquired()
    assert value(recorder, "vllm:num_requests_waiting") == 0.0
    assert value(recorder, "vllm:num_requests_running") == 1.0
    clock.now += 1.0  # prefill
    request.output()
    for _ in range(4):  # decode: 4 more chunks, 0.25 s apart
        clock.now += 0.25
        request.output()
    clock.now += 0.1  # tail after the last token
    assert request.finish("length", prompt_tokens=10, generation_tokens=5)
    assert not request.finish("stop", prompt_tokens=99, generation_tokens=99)

    assert value(recorder, "vllm:num_requests_running") == 0.0
    assert value(recorder, "vllm:request_success_total", finished_reason="length") == 1.0
    assert value(recorder, "vllm:request_success_total", finished_reason="stop") == 0.0
    assert value(recorder, "vllm:prompt_tokens_total") == 10.0
    assert value(recorder, "vllm:generation_tokens_total") == 5.0
    expected_sums = {
        "vllm:request_queue_time_seconds": 0.5,
        "vllm:time_to_first_token_seconds": 1.5,
        "vllm:request_prefill_time_seconds": 1.0,
        "vllm:request_decode_time_seconds": 1.0,
        "vllm:request_inference_time_seconds": 2.0,
        "vllm:e2e_request_latency_seconds": 2.6,
        "vllm:inter_token_latency_seconds": 1.0,
        "vllm:request_time_per_output_token_seconds": 0.25,
    }
    for name, total in expected_sums.items():
        assert histogram(recorder, name).sum == pytest.approx(total), name
    assert histogram(recorder, "vllm:inter_token_latency_seconds").count == 4
    assert histogram(recorder, "vllm:request_generation_tokens").sum == 5


def test_single_token_request_observes_tpot_as_zero() -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    request = recorder.start_request()
    request.slot_acquired()
    request.output()
    request.finish("stop", prompt_tokens=3, generation_tokens=1)
    tpot = histogram(recorder, "vllm:request_time_per_output_token_seconds")
    assert (tpot.count, tpot.sum) == (1, 0.0)


def test_abort_while_waiting_settles_waiting_and_counts_abort_only() -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    request = recorder.start_request()
    request.finish("abort")
    assert value(recorder, "vllm:num_requests_waiting") == 0.0
    assert value(recorder, "vllm:num_requests_running") == 0.0
    assert value(recorder, "vllm:request_success_total", finished_reason="abort") == 1.0
    assert histogram(recorder, "vllm:request_queue_time_seconds").count == 0
    assert histogram(recorder, "vllm:e2e_request_latency_seconds").count == 0
    assert value(recorder, "proxy_estimated_token_counts_total") == 0.0


def test_stream_without_usage_counts_chunks_as_an_estimate() -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    request = recorder.start_request()
    request.slot_acquired()
    for _ in range(3):
        request.output()
    request.finish("abort")
    assert value(recorder, "vllm:generation_tokens_total") == 3.0
    assert value(recorder, "proxy_estimated_token_counts_total") == 1.0
    # Like vLLM, a request its engine did not finish leaves the per-request histograms alone.
    assert histogram(recorder, "vllm:request_generation_tokens").count == 0


def test_parallel_sampling_observes_the_longest_choice() -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    request = recorder.start_request()
    request.n = 2
    request.slot_acquired()
    for index in (0, 1, 0, 1, 0):
        request.output(index)
    request.finish("stop", prompt_tokens=4, generation_tokens=5)
    assert histogram(recorder, "vllm:request_max_num_generation_tokens").sum == 3
    assert histogram(recorder, "vllm:request_params_n").sum == 2


@pytest.mark.parametrize(
    ("reason", "label"),
    [("tool_calls", "stop"), (None, "stop"), ("length", "length"), ("Bad Value!", "stop")],
)
def test_upstream_finish_reasons_map_onto_vllm_labels(reason: str | None, label: str) -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    request = recorder.start_request()
    request.slot_acquired()
    request.finish(reason, prompt_tokens=1, generation_tokens=1)
    assert value(recorder, "vllm:request_success_total", finished_reason=label) == 1.0


def test_http_series_group_status_and_skip_excluded_handlers() -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    recorder.observe_http("/v1/chat/completions", "POST", 200, 0.2)
    recorder.observe_http("/v1/chat/completions", "POST", 503, 0.05)
    recorder.observe_http("/metrics", "GET", 200, 0.001)
    requests = families(recorder)["http_requests_total"].samples
    assert [(dict(s.labels)["status"], s.value) for s in requests] == [("2xx", 1.0), ("5xx", 1.0)]
    assert histogram(recorder, "http_request_duration_highr_seconds").count == 2


def test_snapshot_is_json_ready_and_matches_the_text() -> None:
    recorder = ProxyMetricsRecorder(MODEL)
    request = recorder.start_request()
    request.slot_acquired()
    request.output()
    request.finish("stop", prompt_tokens=2, generation_tokens=1)
    snapshot = recorder.snapshot()
    assert (
        orjson.loads(render_json(recorder.collect()))["families"][0]["name"]
        == (snapshot["families"][0]["name"])
    )
    by_name = {f["name"]: f for f in snapshot["families"]}
    assert by_name["vllm:generation_tokens_total"]["samples"][0]["value"] == 1.0
    assert by_name["vllm:time_to_first_token_seconds"]["samples"][0]["count"] == 1


def test_process_series_are_served() -> None:
    names = set(families(ProxyMetricsRecorder(MODEL)))
    assert {
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "python_info",
    } <= names


def test_max_model_len_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_model_len"):
        ProxyMetricsRecorder(MODEL, max_model_len=0)


def test_promtool_accepts_the_output_after_traffic(promtool: str) -> None:
    recorder = ProxyMetricsRecorder(MODEL, engine="0", max_model_len=1_000_000)
    for reason in ("stop", "length", "abort", "error"):
        request = recorder.start_request()
        request.slot_acquired()
        request.output()
        request.output()
        request.finish(reason, prompt_tokens=7, generation_tokens=2)
    recorder.observe_http("/v1/chat/completions", "POST", 200, 0.3)
    recorder.count_error("connect")
    text = render_text(recorder.collect())
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30, check=False
    )
    problems = (result.stdout + result.stderr).decode().splitlines()
    # promtool lints the ':' that vLLM's own names carry; that warning, and only it, is expected.
    unexpected = [
        p
        for p in problems
        if p.strip() and not re.search(r"metric names should not contain ':'", p)
    ]
    assert result.returncode in (0, 3), problems
    assert not unexpected, unexpected


def _series_by_model(recorder: ProxyMetricsRecorder, name: str) -> dict[str, int]:
    """How many series of family ``name`` each model_name has."""
    (family,) = [f for f in recorder.collect() if f.name == name]
    counts: dict[str, int] = {}
    for sample in family.samples:
        model = dict(sample.labels)["model_name"]
        counts[model] = counts.get(model, 0) + 1
    return counts


def test_auto_gives_each_served_model_every_series_at_zero() -> None:
    recorder = ProxyMetricsRecorder("auto", process_metrics=False)
    assert recorder.per_request_model
    assert list(recorder.models) == ["other"]
    served = recorder.serve_models(["a", "b", "a"])
    assert (served.added, served.refused) == (("a", "b"), 0)
    assert recorder.serve_models(["b"]).added == ()  # a model is bound once
    assert recorder.models == ("other", "a", "b")
    reasons = _series_by_model(recorder, "vllm:request_success_total")
    every = len(FinishedReason)  # every finished_reason at zero, for each model
    assert reasons == {"other": every, "a": every, "b": every}
    rejections = _series_by_model(recorder, "vllm:admission_rejections_total")
    assert set(rejections.values()) == {len(RejectionReason)}


@pytest.mark.parametrize("model", ["a", "b"])
def test_auto_counts_a_request_under_its_model(model: str) -> None:
    recorder = ProxyMetricsRecorder("auto", process_metrics=False)
    recorder.serve_models(["a", "b"])
    recorder.start_request(model=model).finish("stop", prompt_tokens=3, generation_tokens=2)
    (family,) = [f for f in recorder.collect() if f.name == "vllm:prompt_tokens_total"]
    values = {dict(s.labels)["model_name"]: s.value for s in family.samples}
    assert values == {"other": 0, "a": 0, "b": 0} | {model: 3}


@pytest.mark.parametrize("model", [None, 7, ["a"], {"a": 1}, "c", "a" * 10_000])
def test_auto_folds_any_other_model_into_other(model: object) -> None:
    recorder = ProxyMetricsRecorder("auto", process_metrics=False)
    recorder.serve_models(["a"])
    assert recorder.series_for(model) is recorder.series_for("other")
    assert recorder.series_for("a") is not recorder.series_for("other")


def test_auto_is_bounded_in_models_and_name_length() -> None:
    recorder = ProxyMetricsRecorder("auto", process_metrics=False)
    names = ["n" * (MAX_MODEL_NAME + 1), *(f"m{i}" for i in range(MAX_MODELS + 5))]
    served = recorder.serve_models(names)
    assert len(served.added) == MAX_MODELS
    assert served.refused == 6
    assert len(recorder.models) == MAX_MODELS + 1  # and "other"


def test_a_fixed_model_name_ignores_the_requested_model() -> None:
    recorder = ProxyMetricsRecorder("m", process_metrics=False)
    assert not recorder.per_request_model
    assert recorder.serve_models(["a"]).added == ()
    assert recorder.series_for("a") is recorder.series_for(None)
    assert recorder.models == ("m",)


def test_a_record_moved_to_another_model_takes_its_gauge_along() -> None:
    recorder = ProxyMetricsRecorder("auto", process_metrics=False)
    recorder.serve_models(["a"])
    record = recorder.start_request()
    record.slot_acquired()
    record.move_to(recorder.series_for("a"))
    (family,) = [f for f in recorder.collect() if f.name == "vllm:num_requests_running"]
    assert {dict(s.labels)["model_name"]: s.value for s in family.samples} == {
        "other": 0,
        "a": 1,
    }
    record.finish("stop", prompt_tokens=1, generation_tokens=1)
    (family,) = [f for f in recorder.collect() if f.name == "vllm:num_requests_running"]
    assert {s.value for s in family.samples} == {0}
