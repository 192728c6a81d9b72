"""Generic Prometheus pieces: metric types, the registry, samples, the JSON snapshot, text
and JSON exposition, and the process collector. Nothing here knows of vLLM or the proxy."""

from metrics_proxy.prometheus.exposition import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_TEXT,
    RenderedFamily,
    format_value,
    pre_render,
    render_json,
    render_text,
)
from metrics_proxy.prometheus.metrics import (
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
)
from metrics_proxy.prometheus.process import ProcessCollector
from metrics_proxy.prometheus.registry import Collector, Registry
from metrics_proxy.prometheus.samples import (
    HistogramValue,
    LabelPairs,
    MetricFamily,
    MetricType,
    Sample,
    bucket_quantile,
)
from metrics_proxy.prometheus.snapshot import snapshot_dict

__all__ = [
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_TEXT",
    "Collector",
    "Counter",
    "CounterChild",
    "Gauge",
    "GaugeChild",
    "Histogram",
    "HistogramChild",
    "HistogramValue",
    "LabelPairs",
    "MetricFamily",
    "MetricType",
    "ProcessCollector",
    "Registry",
    "RenderedFamily",
    "Sample",
    "bucket_quantile",
    "format_value",
    "pre_render",
    "render_json",
    "render_text",
    "snapshot_dict",
]
