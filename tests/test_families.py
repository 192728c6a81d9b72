"""The table of families: vLLM's facts, and the recorder's output, match it."""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from metrics_proxy import ProxyMetricsRecorder
from metrics_proxy.families import (
    FAMILIES,
    HTTP_FAMILIES,
    VLLM_FAMILIES,
    DisconnectStage,
    ErrorKind,
    FamilySpec,
    FinishedReason,
    RejectionReason,
    WaitingReason,
)
from metrics_proxy.prometheus import HistogramValue, MetricFamily

VLLM = json.loads((Path(__file__).parent / "data" / "vllm_metrics.json").read_text())
VLLM_BY_NAME: dict[str, dict[str, Any]] = {m["name"]: m for m in VLLM["metrics"]}
MAX_MODEL_LENS = [int(length) for length in VLLM["request_tokens_buckets"]]


def vllm_bounds(fact: dict[str, Any], max_model_len: int) -> tuple[float, ...]:
    if fact["bucket_family"] == "request_tokens":
        return tuple(map(float, VLLM["request_tokens_buckets"][str(max_model_len)]))
    return tuple(map(float, fact["buckets"]))


@pytest.mark.parametrize("spec", [*VLLM_FAMILIES, *HTTP_FAMILIES], ids=lambda s: s.name)
def test_every_vllm_family_in_the_table_is_vllms(spec: FamilySpec) -> None:
    fact = VLLM_BY_NAME[spec.name]
    assert (spec.type, spec.help, list(spec.labels)) == (fact["type"], fact["help"], fact["labels"])
    for max_model_len in MAX_MODEL_LENS:
        expected = vllm_bounds(fact, max_model_len) if fact["type"] == "histogram" else ()
        assert spec.bounds(max_model_len) == expected, max_model_len


def test_the_closed_label_sets_are_vllms() -> None:
    def values(name: str, label: str) -> list[str]:
        label_values: list[str] = VLLM_BY_NAME[name]["label_values"][label]
        return label_values

    assert list(FinishedReason) == values("vllm:request_success_total", "finished_reason")
    assert list(WaitingReason) == values("vllm:num_requests_waiting_by_reason", "reason")
    # vLLM's reasons, then the proxy's own (a request that waited past --max-queue-wait).
    assert list(RejectionReason) == [
        *values("vllm:admission_rejections_total", "reason"),
        "max_queue_wait",
    ]


def collected(max_model_len: int) -> dict[str, MetricFamily]:
    recorder = ProxyMetricsRecorder("m", max_model_len=max_model_len, process_metrics=False)
    recorder.observe_http("/v1/models", "GET", 200, 0.1)  # http_* series appear on first use
    return {family.name: family for family in recorder.collect()}


@pytest.mark.parametrize("max_model_len", [1, 8192])
def test_the_recorder_exports_the_table_in_its_order(max_model_len: int) -> None:
    families = collected(max_model_len)
    assert list(families) == [spec.name for spec in FAMILIES]
    for spec in FAMILIES:
        family = families[spec.name]
        assert (family.type, family.help) == (spec.type, spec.help), spec.name
        for sample in family.samples:
            assert tuple(name for name, _ in sample.labels) == spec.labels, spec.name
            if isinstance(sample.value, HistogramValue):
                bounds = (*spec.bounds(max_model_len), math.inf)
                assert sample.value.upper_bounds == bounds, spec.name


@pytest.mark.parametrize(
    ("family", "label", "closed"),
    [
        ("vllm:request_success_total", "finished_reason", FinishedReason),
        ("vllm:num_requests_waiting_by_reason", "reason", WaitingReason),
        ("vllm:admission_rejections_total", "reason", RejectionReason),
        ("proxy_errors_total", "kind", ErrorKind),
        ("proxy_client_disconnects_total", "stage", DisconnectStage),
    ],
)
def test_every_closed_label_value_exists_at_zero_from_start(
    family: str, label: str, closed: type[StrEnum]
) -> None:
    samples = collected(8192)[family].samples
    assert [dict(sample.labels)[label] for sample in samples] == list(closed)
    assert {sample.value for sample in samples} == {0.0}


def test_the_recorder_counts_enum_members_and_their_strings_alike() -> None:
    recorder = ProxyMetricsRecorder("m", process_metrics=False)
    recorder.count_error(ErrorKind.CONNECT)
    recorder.count_error("connect")
    recorder.count_disconnect(DisconnectStage.STREAMING)
    recorder.count_admission_rejection(RejectionReason.MAX_QUEUE_WAIT)
    counted = {
        (family.name, sample.labels[-1][1]): sample.value
        for family in recorder.collect()
        for sample in family.samples
        if family.name.startswith(("proxy_", "vllm:admission")) and sample.value
    }
    assert counted == {
        ("proxy_errors_total", "connect"): 2.0,
        ("proxy_client_disconnects_total", "streaming"): 1.0,
        ("vllm:admission_rejections_total", "max_queue_wait"): 1.0,
    }
