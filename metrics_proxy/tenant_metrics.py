"""Per-tenant series (attribution): who sent the requests and used the tokens, in at most
``limit`` tenants' series, the rest folded into one; pure accounting, no I/O."""

from __future__ import annotations

import time
from collections.abc import Callable

from metrics_proxy import families
from metrics_proxy.families import REJECTED_OUTCOME, TENANT_OTHER, TENANT_UNKNOWN
from metrics_proxy.prometheus.metrics import Counter, CounterChild, Histogram
from metrics_proxy.prometheus.registry import Registry
from metrics_proxy.record import RequestRecord

__all__ = ["TenantAccount", "TenantMetrics"]


class _ModelChildren:
    """A tenant's children under one model_name."""

    __slots__ = ("by_outcome", "generation", "labels", "prompt", "queue")

    def __init__(self, metrics: TenantMetrics, model_name: str, tenant: str) -> None:
        self.labels = (model_name, metrics.engine, tenant)
        self.by_outcome: dict[str, CounterChild] = {}
        self.prompt = metrics.prompt_tokens.labels(*self.labels)
        self.generation = metrics.generation_tokens.labels(*self.labels)
        self.queue = metrics.queue_time.labels(*self.labels)


class TenantAccount:
    """One tenant's series, bound once per model it asks for: what each of its requests
    moves as it settles. The model is the record's (with ``--model-name auto``, the one its
    body asked for among those served), so the tenant's series join vLLM's by model_name."""

    __slots__ = ("_by_model", "_metrics", "label")

    def __init__(self, metrics: TenantMetrics, label: str) -> None:
        self.label = label
        self._metrics = metrics
        # The models are bounded by the recorder (those served, and "other").
        self._by_model = {metrics.model_name: _ModelChildren(metrics, metrics.model_name, label)}

    def settle(self, record: RequestRecord) -> None:
        """Count ``record``, settled: its outcome, its wait for a slot, and the tokens of a
        request an engine ran (the same counts as vLLM's series)."""
        model_name = record.model_name
        children = self._by_model.get(model_name)
        if children is None:
            children = self._by_model[model_name] = _ModelChildren(
                self._metrics, model_name, self.label
            )
        outcome = REJECTED_OUTCOME if record.rejected else record.finished_reason
        child = children.by_outcome.get(outcome)
        if child is None:  # a tenant's outcomes appear as they happen, as its tokens do
            child = children.by_outcome[outcome] = self._metrics.requests.labels(
                *children.labels, outcome
            )
        child.inc()
        queue = record.queue_seconds
        if queue is not None:
            children.queue.observe(queue)
        if record.rejected:
            return
        if record.prompt_tokens is not None:
            children.prompt.inc(record.prompt_tokens)
        children.generation.inc(record.generation_tokens or 0)


class TenantMetrics:
    """The four tenant families, registered in ``registry``, and an account per tenant.

    The first ``limit`` tenants seen get series of their own, for the process's life; any
    later one is counted as TENANT_OTHER, so a client that invents a tenant per request adds
    no series and keeps no memory. TENANT_OTHER exists at zero from the start (an alert on
    its rate sees the first fold) and, like TENANT_UNKNOWN, never counts toward the limit.
    Not thread-safe by design: called from the event loop only.
    """

    def __init__(
        self,
        registry: Registry,
        model_name: str,
        engine: str,
        limit: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.model_name = model_name
        self.engine = engine
        self.limit = limit
        self.requests = _counter(families.TENANT_REQUESTS)
        self.prompt_tokens = _counter(families.TENANT_PROMPT_TOKENS)
        self.generation_tokens = _counter(families.TENANT_GENERATION_TOKENS)
        spec = families.TENANT_QUEUE_TIME
        self.queue_time = Histogram(spec.name, spec.help, spec.labels, spec.bounds(1), clock=clock)
        for metric in (self.requests, self.prompt_tokens, self.generation_tokens, self.queue_time):
            registry.register(metric)
        self._named: dict[str, TenantAccount] = {}
        self.other = TenantAccount(self, TENANT_OTHER)
        self._unknown: TenantAccount | None = None

    def account(self, tenant: str) -> TenantAccount:
        """The account of ``tenant``: its own while fewer than ``limit`` have one."""
        account = self._named.get(tenant)
        if account is not None:
            return account
        if tenant == TENANT_OTHER:
            return self.other
        if tenant == TENANT_UNKNOWN:
            if self._unknown is None:
                self._unknown = TenantAccount(self, TENANT_UNKNOWN)
            return self._unknown
        if len(self._named) >= self.limit:
            return self.other
        account = self._named[tenant] = TenantAccount(self, tenant)
        return account

    @property
    def tenants(self) -> int:
        """How many tenants have series of their own (TENANT_OTHER and TENANT_UNKNOWN aside)."""
        return len(self._named)


def _counter(spec: families.FamilySpec) -> Counter:
    return Counter(spec.name, spec.help, spec.labels)
