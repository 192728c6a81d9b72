"""metrics_proxy: an aiohttp proxy that exports vLLM's Prometheus metrics for OpenAI-style traffic."""

__version__ = "0.1.0"

__all__ = ["__version__"]
