"""Prometheus metrics of the gpuhub service, at /services/gpu-usage/metrics. Computed at scrape
time from the ledger, the catalog and the service's own status, in a registry of the service's
own (no process-global metrics). Label sets are bounded by the catalog: team, GPU type,
currency; user names only when the operator asks (`gpuhub service --metrics-user-labels`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..clock import utcnow
from ..ledger.rules import billed_seconds, session_cost
from .app import GPUHubService

NO_GPU = ""
"""The gpu_type label of sessions without a GPU type (CPU servers)."""


class ServiceCollector(Collector):
    def __init__(self, service: GPUHubService, *, user_labels: bool = False) -> None:
        self.service = service
        self.user_labels = user_labels

    def collect(self) -> Iterator[Metric]:
        now = utcnow()
        yield from self._service_metrics(now)
        yield from self._catalog_metrics()
        yield from self._ledger_metrics(now)

    def _service_metrics(self, now: datetime) -> Iterator[Metric]:
        status = self.service.status
        ticks = CounterMetricFamily("gpuhub_service_ticks", "Successful service ticks.")
        ticks.add_metric([], status.ticks)
        yield ticks
        lag = GaugeMetricFamily(
            "gpuhub_reconcile_lag_seconds",
            "Seconds since the last successful reconciliation tick (since the service started "
            "when none has succeeded yet).",
        )
        lag.add_metric([], (now - (status.last_tick_at or status.started_at)).total_seconds())
        yield lag
        failing = GaugeMetricFamily(
            "gpuhub_service_tick_failing", "1 while the last tick failed (hub, database, API)."
        )
        failing.add_metric([], 1 if status.last_error else 0)
        yield failing
        for name, value, text in (
            ("gpuhub_reconcile_adopted", status.adopted, "Sessions adopted by reconciliation."),
            ("gpuhub_reconcile_closed", status.closed, "Sessions closed by reconciliation."),
            (
                "gpuhub_strays_ended",
                status.strays_ended,
                "Servers ended that the hub did not know.",
            ),
            ("gpuhub_budget_stops", status.budget_stops, "Stops asked for teams over budget."),
        ):
            counter = CounterMetricFamily(name, text)
            counter.add_metric([], value)
            yield counter
        culler = self.service.culler_status()
        culled = CounterMetricFamily(
            "gpuhub_culled", "Servers the culler stopped, by reason.", labels=["reason"]
        )
        for reason in ("culled-idle", "culled-gpu-idle", "max-age"):
            culled.add_metric([reason], culler.culled[reason])
        yield culled
        warned = CounterMetricFamily("gpuhub_cull_warnings", "Warnings before a cull.")
        warned.add_metric([], culler.warned)
        yield warned
        cycle = GaugeMetricFamily(
            "gpuhub_cull_cycle_seconds", "How long the last culling cycle took."
        )
        cycle.add_metric([], culler.last_cycle_seconds)
        yield cycle

    def _catalog_metrics(self) -> Iterator[Metric]:
        store = self.service.store
        current = store.current
        info = GaugeMetricFamily(
            "gpuhub_catalog_info", "The catalog in force (always 1).", labels=["version"]
        )
        info.add_metric([current.version], 1)
        yield info
        loaded = GaugeMetricFamily(
            "gpuhub_catalog_loaded_timestamp_seconds", "When the catalog in force was loaded."
        )
        loaded.add_metric([], current.loaded_at.timestamp())
        yield loaded
        ok = GaugeMetricFamily(
            "gpuhub_catalog_reload_ok",
            "1 when the catalog file loads; 0 while its last edit is invalid (the hub keeps the "
            "last good one).",
        )
        ok.add_metric([], 0 if store.last_error else 1)
        yield ok
        quota = GaugeMetricFamily(
            "gpuhub_gpu_quota", "Concurrent GPUs a team may hold.", labels=["team", "gpu_type"]
        )
        budget = GaugeMetricFamily(
            "gpuhub_budget_gpu_seconds",
            "A team's monthly budget, in GPU-seconds (the catalog's GPU-hours x 3600).",
            labels=["team"],
        )
        for team, entry in sorted(current.catalog.teams.items()):
            for gpu_type, count in sorted(entry.quota.gpus.items()):
                quota.add_metric([team, gpu_type], count)
            if entry.quota.monthly_gpu_hours is not None:
                budget.add_metric([team], float(entry.quota.monthly_gpu_hours) * 3600)
        yield quota
        yield budget

    def _ledger_metrics(self, now: datetime) -> Iterator[Metric]:
        ledger = self.service.ledger()
        catalog = self.service.store.catalog
        allocated: dict[tuple[str, ...], int] = defaultdict(int)
        seconds: dict[tuple[str, str], float] = defaultdict(float)
        cost: dict[tuple[str, str], float] = defaultdict(float)
        for s in ledger.open_sessions():
            if s.started_at is None:
                continue
            team, gpu_type = s.team or "", s.gpu_type or NO_GPU
            key: tuple[str, ...] = (
                (team, gpu_type, s.user) if self.user_labels else (team, gpu_type)
            )
            allocated[key] += s.gpu_count
            running = billed_seconds(s.started_at, now)
            seconds[(team, gpu_type)] += running * s.gpu_count
            cost[(team, s.currency)] += float(session_cost(s.price_per_hour, running))
        for total in ledger.billed_totals():
            seconds[(total.team or "", total.gpu_type or NO_GPU)] += total.gpu_seconds
            cost[(total.team or "", total.currency)] += float(total.cost)
        labels = ["team", "gpu_type", "user"] if self.user_labels else ["team", "gpu_type"]
        gpus = GaugeMetricFamily(
            "gpuhub_gpus_allocated", "GPUs held by running servers.", labels=labels
        )
        for key, count in sorted(allocated.items()):
            gpus.add_metric(list(key), count)
        yield gpus
        used = CounterMetricFamily(
            "gpuhub_gpu_seconds",
            "GPU-seconds billed (running servers until now).",
            labels=["team", "gpu_type"],
        )
        for key, value in sorted(seconds.items()):
            used.add_metric(list(key), value)
        yield used
        money = CounterMetricFamily(
            "gpuhub_cost", "Cost billed (running servers until now).", labels=["team", "currency"]
        )
        for key, value in sorted(cost.items()):
            money.add_metric(list(key), value)
        yield money
        ratio = GaugeMetricFamily(
            "gpuhub_budget_used_ratio",
            "GPU-hours used this month (as budgets count them) / the monthly budget.",
            labels=["team"],
        )
        for team, entry in sorted(catalog.teams.items()):
            limit = entry.quota.monthly_gpu_hours
            if limit:  # the number budgets are enforced on (Ledger.gpu_hours_this_month)
                ratio.add_metric([team], float(ledger.gpu_hours_this_month(team)) / float(limit))
        yield ratio
        refused = CounterMetricFamily(
            "gpuhub_admissions_refused",
            "GPU spawns refused, by reason: gpu-quota, user-cap, budget, billing-unavailable.",
            labels=["team", "gpu_type", "reason"],
        )
        for refusal in ledger.refusal_counts():
            refused.add_metric([refusal.team, refusal.gpu_type, refusal.reason], refusal.refusals)
        yield refused


def metrics_registry(service: GPUHubService, *, user_labels: bool = False) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service, user_labels=user_labels))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
