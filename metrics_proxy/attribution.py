"""Attribution: each metered request's tenant, read as it arrives, and the series it counts in."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from metrics_proxy.config import Config
from metrics_proxy.prometheus.registry import Registry
from metrics_proxy.record import RequestRecord
from metrics_proxy.recorder import AUTO_MODEL, OTHER_MODEL
from metrics_proxy.tenant_metrics import TenantMetrics
from metrics_proxy.tenants import TenantReader


class Attribution:
    """Reads who sent a request (tenants.py) and binds its record to that tenant's series
    (tenant_metrics.py), which count it when it settles."""

    __slots__ = ("metrics", "reader")

    def __init__(self, reader: TenantReader, metrics: TenantMetrics) -> None:
        self.reader = reader
        self.metrics = metrics

    @classmethod
    def of(
        cls, config: Config, registry: Registry, clock: Callable[[], float]
    ) -> Attribution | None:
        """The attribution ``config`` asks for, its series in ``registry`` (their quantile
        sketches moved by ``clock``); None when off."""
        if not config.attribution:
            return None
        salt = config.tenant_salt.encode() if config.tenant_from_api_key else None
        reader = TenantReader(config.tenant_header, salt)
        # The model "other" tenants count under from the start: with --model-name auto, the
        # fold of unlisted models, never the word "auto".
        model = OTHER_MODEL if config.model_name == AUTO_MODEL else config.model_name
        metrics = TenantMetrics(
            registry, model, config.engine_label, config.tenant_limit, clock=clock
        )
        return cls(reader, metrics)

    def attribute(self, headers: Mapping[str, str], record: RequestRecord) -> str:
        """Bind ``record`` to its sender's series; its tenant's label (which the queue's
        per-tenant cap goes by) is returned."""
        tenant = record.tenant = self.reader.read(headers)
        series = record.tenant_series = self.metrics.account(tenant)
        return series.label
