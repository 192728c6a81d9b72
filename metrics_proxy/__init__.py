"""metrics_proxy: an aiohttp proxy exporting vLLM's Prometheus metrics for OpenAI-style traffic."""

from metrics_proxy.record import RequestRecord
from metrics_proxy.recorder import ProxyMetricsRecorder

__version__ = "0.1.0"

__all__ = ["ProxyMetricsRecorder", "RequestRecord", "__version__"]
