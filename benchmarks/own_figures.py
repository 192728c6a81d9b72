"""The proxy's own timings against what the client and the engine measured, and the bounds
issue 12 holds them to: its mean inter-token latency within 0.5 ms of the engine's step, its
TTFT within 1 ms per request of the client's.

Everything is a raw _sum/_count (the proxy's, from its /internal/metrics) or a plain sum (the
client's), added up over runs: no bucket percentiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from report import number

ITL_BOUND_MS = 0.5
TTFT_BOUND_MS = 1.0


def _mean(total: float, count: int) -> float:
    return total / count if count else float("nan")


@dataclass
class Own:
    """One way of reading the proxy (steady state, or streams opened at once), over its runs."""

    label: str
    itl_sum: float = 0.0  # the proxy's vllm:inter_token_latency_seconds
    itl_count: int = 0
    step_sum: float = 0.0  # the engine's interval, stamp minus the stream's previous stamp
    step_count: int = 0
    proxy_ttft_sum: float = 0.0  # the proxy's vllm:time_to_first_token_seconds
    proxy_ttft_count: int = 0
    client_ttft_sum: float = 0.0  # the client's, over the same requests
    client_ttft_count: int = 0
    first_latency_sum: float = 0.0  # their first chunks' delivery: received minus stamped
    direct_ttft_sum: float = 0.0  # the client's, straight to the engine (steady state only)
    direct_ttft_count: int = 0
    runs: int = 0
    quiet: bool = True  # every mark was taken with no request awaiting its first chunk

    def add(self, result: dict[str, Any], proxy: dict[str, float], *, window: bool) -> None:
        """One client run through the proxy: its RESULT, and the proxy's deltas over the same
        requests (``window``: those sent in the client's window; else all of them)."""
        self.runs += 1
        self.quiet &= result.get("quiet", True)
        self.itl_sum += proxy["itl_sum"]
        self.itl_count += int(proxy["itl_count"])
        self.proxy_ttft_sum += proxy["ttft_sum"]
        self.proxy_ttft_count += int(proxy["ttft_count"])
        prefix = "" if window else "all_"
        self.step_sum += result[f"{prefix}step_sum"]
        self.step_count += result[f"{prefix}step_count"]
        if window:
            self.first_latency_sum += result["window_first_latency_sum"]
            self.client_ttft_sum += result["window_ttft_sum"]
            self.client_ttft_count += result["window_ttft_count"]
        else:
            self.client_ttft_sum += result["ttft_mean"] * result["ttft_count"]
            self.client_ttft_count += result["ttft_count"]

    def add_direct(self, result: dict[str, Any]) -> None:
        self.direct_ttft_sum += result["window_ttft_sum"]
        self.direct_ttft_count += result["window_ttft_count"]

    @property
    def itl_off(self) -> float:
        """The proxy's mean ITL minus the engine's mean step, seconds."""
        return _mean(self.itl_sum, self.itl_count) - _mean(self.step_sum, self.step_count)

    @property
    def ttft_off(self) -> float:
        """The proxy's TTFT minus the client's, per request, seconds."""
        proxy = _mean(self.proxy_ttft_sum, self.proxy_ttft_count)
        return proxy - _mean(self.client_ttft_sum, self.client_ttft_count)

    @property
    def same_requests(self) -> bool:
        return self.proxy_ttft_count == self.client_ttft_count

    def rows(self, step_ms: float) -> list[str]:
        """Two rows of the table in ``header``."""
        itl = _mean(self.itl_sum, self.itl_count) * 1e3
        kept = _mean(self.step_sum, self.step_count) * 1e3
        proxy = _mean(self.proxy_ttft_sum, self.proxy_ttft_count) * 1e3
        client = _mean(self.client_ttft_sum, self.client_ttft_count) * 1e3
        more = ""
        if self.first_latency_sum:
            delivery = _mean(self.first_latency_sum, self.client_ttft_count) * 1e3
            more += f"; of it, the first chunk from the engine: {number(delivery, 'ms')}"
        if self.direct_ttft_count:
            direct_ms = _mean(self.direct_ttft_sum, self.direct_ttft_count) * 1e3
            more += f"; straight to the engine: {number(direct_ms, 'ms')}"
        return [
            f"| mean inter-token latency ({self.label}, {self.itl_count:,} observations) "
            f"| {itl:.2f} ms | the engine's step: {step_ms:g} ms, kept at {kept:.2f} ms "
            f"| {signed(self.itl_off * 1e3)} "
            f"| ≤ {ITL_BOUND_MS:g} ms | {verdict(self.itl_off * 1e3, ITL_BOUND_MS)} |",
            f"| TTFT sum per request ({self.label}, {self.proxy_ttft_count:,} requests) "
            f"| {number(proxy, 'ms')} | the client's mean TTFT: {number(client, 'ms')} "
            f"({self.client_ttft_count:,} requests{more}) | {signed(self.ttft_off * 1e3)} "
            f"| ≤ {TTFT_BOUND_MS:g} ms | {verdict(self.ttft_off * 1e3, TTFT_BOUND_MS)} |",
        ]


HEADER = [
    "| figure | the proxy's | compared with | difference | bound | verdict |",
    "| --- | --- | --- | --- | --- | --- |",
]


def signed(value: float) -> str:
    if math.isnan(value):
        return "—"
    return ("+" if value >= 0 else "-") + number(abs(value), "ms")


def verdict(off_ms: float, bound_ms: float) -> str:
    if math.isnan(off_ms):
        return "n/a"
    return "PASS" if abs(off_ms) <= bound_ms else "MISS"


def targets(steady: Own, rate: str) -> list[str]:
    """The issue's two target lines, read on the steady state."""
    itl, ttft = steady.itl_off * 1e3, steady.ttft_off * 1e3
    lines = [
        f"- {verdict(itl, ITL_BOUND_MS)} mean inter-token latency within {ITL_BOUND_MS:g} ms "
        f"of the engine's step, steady state at {rate}: {signed(itl)}",
        f"- {verdict(ttft, TTFT_BOUND_MS)} TTFT within {TTFT_BOUND_MS:g} ms per request of the "
        f"client's, steady state at {rate}: {signed(ttft)}",
    ]
    if steady.runs and not steady.same_requests:
        lines[-1] += (
            f" (the proxy counted {steady.proxy_ttft_count:,} requests, the client "
            f"{steady.client_ttft_count:,})"
        )
    if not steady.quiet:
        lines[-1] += " (a mark found requests awaiting their first chunk for 20 steps)"
    return lines
