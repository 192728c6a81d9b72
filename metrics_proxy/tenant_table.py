"""The top tenants of a JSON snapshot (``GET /internal/metrics``), for print_metrics and its
live view: each tenant's requests, tokens and queue time, summed over models; pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TenantTotals", "by_tokens", "tenant_totals"]

REQUESTS = "proxy_tenant_requests_total"
PROMPT_TOKENS = "proxy_tenant_prompt_tokens_total"
GENERATION_TOKENS = "proxy_tenant_generation_tokens_total"
QUEUE_TIME = "proxy_tenant_queue_time_seconds"

Families = Mapping[str, list[dict[str, Any]]]  # samples by family name


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


@dataclass
class TenantTotals:
    """One tenant's counts since the proxy started; ``queue_p90`` from the snapshot's sketch
    (one model's: the largest where a tenant sends to several)."""

    tenant: str
    requests: float = 0.0
    rejected: float = 0.0
    prompt_tokens: float = 0.0
    generation_tokens: float = 0.0
    queued: float = 0.0  # requests whose wait for a slot was observed
    queue_seconds: float = 0.0
    queue_p90: float | None = field(default=None)

    @property
    def tokens(self) -> float:
        return self.prompt_tokens + self.generation_tokens

    @property
    def queue_mean(self) -> float | None:
        return self.queue_seconds / self.queued if self.queued else None


def _each(samples: Iterable[dict[str, Any]]) -> Iterable[tuple[str, dict[str, Any]]]:
    for sample in samples:
        tenant = sample.get("labels", {}).get("tenant")
        if isinstance(tenant, str):
            yield tenant, sample


def tenant_totals(families: Families) -> dict[str, TenantTotals]:
    """Every tenant of the snapshot's tenant families (none without attribution)."""
    totals: dict[str, TenantTotals] = {}

    def of(tenant: str) -> TenantTotals:
        found = totals.get(tenant)
        if found is None:
            found = totals[tenant] = TenantTotals(tenant)
        return found

    for tenant, sample in _each(families.get(REQUESTS, [])):
        count = _number(sample.get("value"))
        of(tenant).requests += count
        if sample["labels"].get("outcome") == "rejected":
            of(tenant).rejected += count
    for tenant, sample in _each(families.get(PROMPT_TOKENS, [])):
        of(tenant).prompt_tokens += _number(sample.get("value"))
    for tenant, sample in _each(families.get(GENERATION_TOKENS, [])):
        of(tenant).generation_tokens += _number(sample.get("value"))
    for tenant, sample in _each(families.get(QUEUE_TIME, [])):
        row = of(tenant)
        row.queued += _number(sample.get("count"))
        row.queue_seconds += _number(sample.get("sum"))
        p90 = sample.get("p90")
        if isinstance(p90, int | float) and (row.queue_p90 is None or p90 > row.queue_p90):
            row.queue_p90 = float(p90)
    return totals


def by_tokens(totals: Iterable[TenantTotals]) -> list[TenantTotals]:
    """Busiest first: by tokens, then requests (a tenant that only gets refused has none),
    then name; tenants that sent nothing yet (``other`` at start-up) left out."""
    sent = [row for row in totals if row.requests or row.tokens]
    return sorted(sent, key=lambda row: (-row.tokens, -row.requests, row.tenant))
