"""vLLM's own /metrics page, as vLLM 0.33 prints it through prometheus_client: a pure
function of what the simulated engine holds. Made-up figures, vLLM's shape: the families a
proxy cannot see (KV cache, preemptions, prefix cache, sleep state), the gauges, a few it
counts too, with their ``_created`` twins, and the API server's http_* families."""

from __future__ import annotations

from dataclasses import dataclass

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# prometheus_client prints a family's creation time beside each counter and histogram.
CREATED = 1795728323.4968863
# vLLM's KV cache: 27,000 blocks of 16 tokens, as on one 80 GB GPU with an 8B model.
BLOCK_SIZE = 16
NUM_GPU_BLOCKS = 27000
PREEMPTION_BOUNDS = (1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """What the simulated engine holds now, and has served since it started."""

    running: int = 0
    waiting: int = 0
    served: int = 0
    tokens_held: int = 0  # prompt and output tokens of the running requests


def _number(value: float) -> str:
    # The few numbers printed here, as prometheus_client prints them.
    return f"{value:.1f}" if value == int(value) and abs(value) < 1e6 else repr(value)


def _family(name: str, kind: str, help_text: str, lines: list[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines]


def _counter(name: str, help_text: str, labels: str, value: float) -> list[str]:
    base = name.removesuffix("_total")
    return [
        *_family(name, "counter", help_text, [f"{name}{{{labels}}} {_number(value)}"]),
        *_family(base + "_created", "gauge", help_text, [f"{base}_created{{{labels}}} {CREATED}"]),
    ]


def _gauge(name: str, help_text: str, labels: str, value: float) -> list[str]:
    return _family(name, "gauge", help_text, [f"{name}{{{labels}}} {_number(value)}"])


def _preemptions_histogram(labels: str, served: int) -> list[str]:
    name = "vllm:request_num_preemptions"
    help_text = "Histogram of the number of times a request was preempted."
    lines = [f'{name}_bucket{{{labels},le="{b}"}} {_number(served)}' for b in PREEMPTION_BOUNDS]
    lines += [
        f'{name}_bucket{{{labels},le="+Inf"}} {_number(served)}',
        f"{name}_count{{{labels}}} {_number(served)}",
        f"{name}_sum{{{labels}}} 0.0",
    ]
    created = _family(
        name + "_created", "gauge", help_text, [f"{name}_created{{{labels}}} {CREATED}"]
    )
    return [*_family(name, "histogram", help_text, lines), *created]


def exposition(model: str, load: EngineLoad) -> bytes:
    """The engine's /metrics (``engine="0"``, ``model_name=model``) for ``load``."""
    model_label = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    labels = f'engine="0",model_name="{model_label}"'
    usage = min(1.0, -(-load.tokens_held // BLOCK_SIZE) / NUM_GPU_BLOCKS)
    lines = [
        *_gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                labels, load.running),
        *_gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                labels, load.waiting),
        *_gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                labels, usage),
        *_family("vllm:engine_sleep_state", "gauge", "Engine sleep state; awake = 0 means engine "
                 "is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep "
                 "level 1; discard_all = 1 means sleep level 2.",
                 [f'vllm:engine_sleep_state{{{labels},sleep_state="awake"}} 1.0']),
        *_counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number "
                  "of queried tokens.", labels, 100.0 * load.served),
        *_counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of "
                  "cached tokens.", labels, 64.0 * load.served),
        *_counter("vllm:num_preemptions_total", "Cumulative number of preemption from the "
                  "engine.", labels, 0.0),
        *_counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.", labels,
                  100.0 * load.served),
        *_preemptions_histogram(labels, load.served),
        *_family("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig",
                 [f'vllm:cache_config_info{{block_size="{BLOCK_SIZE}",engine="0",'
                  f'num_gpu_blocks="{NUM_GPU_BLOCKS}"}} 1.0']),
        *_family("http_requests_total", "counter", "Total number of requests by method, "
                 "status and handler.",
                 [f'http_requests_total{{handler="/v1/chat/completions",method="POST",'
                  f'status="2xx"}} {_number(load.served)}']),
    ]  # fmt: skip
    return ("\n".join(lines) + "\n").encode()
