"""Prometheus metrics of the gpuhub service, at /services/gpu-usage/metrics. Computed at scrape
time from the ledger, the catalog and the service's own status, in a registry of the service's
own (no process-global metrics). Label sets are bounded by the catalog: team, GPU type,
currency; user names only when the operator asks (`gpuhub service --metrics-user-labels`).

Every `_total` counter only goes up within a service process, whatever reconciliation or a
restored ledger does to the figures behind it (Prometheus reads any decrease as a counter
reset): GPU-seconds and cost count closed sessions only, whose bill is final; running servers'
figures so far are gauges (`gpuhub_running_*`), since reconciliation may still close a session
earlier than the last scrape saw it run. And the collector never exports a counter lower than
it exported before (`never_less`), should the ledger's figures go down (a restore from backup).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import datetime
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from ..catalog import Catalog
from ..ledger.borrow_reads import borrowing_now, borrowing_totals
from ..ledger.rules import billed_seconds, session_cost
from ..ledger.use_totals import use_totals
from .app import GPUHubService

NO_GPU = ""
"""The gpu_type label of sessions without a GPU type (CPU servers)."""

Labels = tuple[str, ...]


def never_less(
    exported: Mapping[Labels, float], found: Mapping[Labels, float]
) -> dict[Labels, float]:
    """What a counter exports now, per label set: what is found now, but never less than what
    was exported before; a label set exported before and no longer found keeps its last value
    (a series that vanished and came back lower would read as a reset too). Sorted by labels."""
    return {
        key: max(found.get(key, 0.0), exported.get(key, 0.0))
        for key in sorted(exported.keys() | found.keys())
    }


class ServiceCollector(Collector):
    """The service's metrics. Remembers what each counter exported (its high-water marks) for as
    long as it lives: build one per service process (web.make_app does) and keep it."""

    def __init__(self, service: GPUHubService, *, user_labels: bool = False) -> None:
        self.service = service
        self.user_labels = user_labels
        self._exported: dict[str, dict[Labels, float]] = {}
        self._lock = threading.Lock()  # one scrape at a time reads and moves the marks

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = self.service.clock()
            metrics = [
                *self._service_metrics(now),
                *self._catalog_metrics(),
                *self._ledger_metrics(now),
                *self._waitlist_metrics(),
            ]
        yield from metrics

    def _counter(
        self, name: str, documentation: str, labels: list[str], found: Mapping[Labels, float]
    ) -> CounterMetricFamily:
        """A counter family of `found`, never lower than this collector exported it before."""
        values = never_less(self._exported.get(name, {}), found)
        self._exported[name] = values
        family = CounterMetricFamily(name, documentation, labels=labels)
        for key, value in values.items():
            family.add_metric(list(key), value)
        return family

    def _service_metrics(self, now: datetime) -> Iterator[Metric]:
        status = self.service.status
        yield self._counter(
            "gpuhub_service_ticks", "Successful service ticks.", [], {(): status.ticks}
        )
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
        steps = GaugeMetricFamily(
            "gpuhub_service_tick_seconds",
            "How long the last successful tick took, by step (`total`: the whole tick).",
            labels=["step"],
        )
        for step, seconds in status.tick_seconds.items():
            steps.add_metric([step], seconds)
        yield steps
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
            yield self._counter(name, text, [], {(): value})
        culler = self.service.culler_status()
        yield self._counter(
            "gpuhub_culled",
            "Servers the culler stopped, by reason.",
            ["reason"],
            {(r,): culler.culled[r] for r in ("culled-idle", "culled-gpu-idle", "max-age")},
        )
        yield self._counter(
            "gpuhub_cull_warnings", "Warnings before a cull.", [], {(): culler.warned}
        )
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
        allocated: dict[Labels, int] = defaultdict(int)
        running_seconds: dict[Labels, int] = defaultdict(int)
        running_cost: dict[Labels, Decimal] = defaultdict(Decimal)
        for s in ledger.open_sessions():
            if s.started_at is None:
                continue
            team, gpu_type = s.team or "", s.gpu_type or NO_GPU
            key: Labels = (team, gpu_type, s.user) if self.user_labels else (team, gpu_type)
            allocated[key] += s.gpu_count
            so_far = billed_seconds(s.started_at, now)
            running_seconds[(team, gpu_type)] += so_far * s.gpu_count
            running_cost[(team, s.currency)] += session_cost(s.price_per_hour, so_far)
        # The counters' series exist (at 0) before their first session closes, for every label
        # set the catalog's quotas or a running server name: increase() counts from there.
        closed_seconds: dict[Labels, int] = dict.fromkeys(running_seconds, 0)
        closed_cost: dict[Labels, Decimal] = dict.fromkeys(running_cost, Decimal(0))
        for team, entry in catalog.teams.items():
            for gpu_type in entry.quota.gpus:
                closed_seconds.setdefault((team, gpu_type), 0)
            closed_cost.setdefault((team, catalog.metering.currency), Decimal(0))
        for total in ledger.billed_totals():
            seconds_key = (total.team or "", total.gpu_type or NO_GPU)
            closed_seconds[seconds_key] = closed_seconds.get(seconds_key, 0) + total.gpu_seconds
            cost_key = (total.team or "", total.currency)
            closed_cost[cost_key] = closed_cost.get(cost_key, Decimal(0)) + total.cost

        labels = ["team", "gpu_type", "user"] if self.user_labels else ["team", "gpu_type"]
        gpus = GaugeMetricFamily(
            "gpuhub_gpus_allocated", "GPUs held by running servers.", labels=labels
        )
        for key, count in sorted(allocated.items()):
            gpus.add_metric(list(key), count)
        yield gpus
        used = self._counter(
            "gpuhub_gpu_seconds",
            "GPU-seconds billed to closed sessions (running servers: gpuhub_running_gpu_seconds).",
            ["team", "gpu_type"],
            {key: float(value) for key, value in closed_seconds.items()},
        )
        yield used
        # the running gauges have the counters' label sets (0 where nothing runs), so that
        # counter + gauge is the total so far for every series
        running_used = GaugeMetricFamily(
            "gpuhub_running_gpu_seconds",
            "GPU-seconds of running servers so far (from their start until the scrape).",
            labels=["team", "gpu_type"],
        )
        for key in self._exported[used.name]:
            running_used.add_metric(list(key), running_seconds.get(key, 0))
        yield running_used
        yield from self._utilisation_metrics(ledger.engine, closed_seconds)
        yield from self._borrowing_metrics(ledger.engine, catalog)
        money = self._counter(
            "gpuhub_cost",
            "Cost billed to closed sessions (running servers: gpuhub_running_cost).",
            ["team", "currency"],
            {key: float(value) for key, value in closed_cost.items()},
        )
        yield money
        running_money = GaugeMetricFamily(
            "gpuhub_running_cost",
            "Cost of running servers so far (from their start until the scrape).",
            labels=["team", "currency"],
        )
        for key in self._exported[money.name]:
            running_money.add_metric(list(key), float(running_cost.get(key, Decimal(0))))
        yield running_money
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
        yield self._counter(
            "gpuhub_admissions_refused",
            "GPU spawns refused, by reason: gpu-quota, user-cap, budget, billing-unavailable.",
            ["team", "gpu_type", "reason"],
            {(r.team, r.gpu_type, r.reason): r.refusals for r in ledger.refusal_counts()},
        )

    def _utilisation_metrics(
        self, engine: Engine, label_sets: Mapping[Labels, int]
    ) -> Iterator[Metric]:
        """GPU-seconds busy and measured by the notebook extension's reports, running and closed
        sessions alike (their GPU use only grows), with the GPU-seconds counter's label sets."""
        busy: dict[Labels, float] = dict.fromkeys(label_sets, 0.0)
        measured: dict[Labels, float] = dict.fromkeys(label_sets, 0.0)
        for total in use_totals(engine):
            key = (total.team or "", total.gpu_type or NO_GPU)
            busy[key] = busy.get(key, 0.0) + total.busy_gpu_seconds
            measured[key] = measured.get(key, 0.0) + total.measured_gpu_seconds
        yield self._counter(
            "gpuhub_gpu_busy_seconds",
            "GPU-seconds above the culling threshold, by the notebook extension's reports.",
            ["team", "gpu_type"],
            busy,
        )
        yield self._counter(
            "gpuhub_gpu_measured_seconds",
            "GPU-seconds whose utilisation the notebook extension's reports measured.",
            ["team", "gpu_type"],
            measured,
        )

    def _borrowing_metrics(self, engine: Engine, catalog: Catalog) -> Iterator[Metric]:
        """GPUs borrowed and lent now; GPU-seconds borrowed and lent and the reclaims, of closed
        borrowed sessions (their bills are final). Every quota's label set is there at 0 before
        the first loan (increase() counts from there)."""
        zeros: dict[Labels, int] = {
            (team, gpu_type): 0
            for team, entry in catalog.teams.items()
            for gpu_type in entry.quota.gpus
        }
        now = borrowing_now(engine)
        for name, text, found in (
            (
                "gpuhub_gpus_borrowed",
                "GPUs of running borrowed servers, per borrowing team.",
                now.borrowed,
            ),
            (
                "gpuhub_gpus_lent",
                "GPUs of a team's quota that other teams' running borrowed servers hold.",
                now.lent,
            ),
        ):
            gauge = GaugeMetricFamily(name, text, labels=["team", "gpu_type"])
            for key, value in sorted((zeros | found).items()):
                gauge.add_metric(list(key), value)
            yield gauge
        totals = borrowing_totals(engine)
        for name, text, counted in (
            (
                "gpuhub_borrowed_gpu_seconds",
                "GPU-seconds billed to closed borrowed sessions, per borrowing team.",
                totals.borrowed_gpu_seconds,
            ),
            (
                "gpuhub_lent_gpu_seconds",
                "GPU-seconds of closed borrowed sessions on a team's quota (each session's "
                "seconds x the GPUs it ran on that team's quota), per lending team.",
                totals.lent_gpu_seconds,
            ),
            (
                "gpuhub_reclaims",
                "Borrowed servers stopped to give their GPUs back (sessions ended reclaimed), "
                "per borrowing team.",
                totals.reclaims,
            ),
        ):
            yield self._counter(
                name,
                text,
                ["team", "gpu_type"],
                {key: float(value) for key, value in (zeros | counted).items()},
            )

    def _waitlist_metrics(self) -> Iterator[Metric]:
        """Requests waiting now, how long turns took to come, and how requests ended."""
        ledger = self.service.ledger()
        waiting = GaugeMetricFamily(
            "gpuhub_waitlist_waiting",
            "Requests waiting in line for a GPU (not yet given their turn).",
            labels=["team", "gpu_type"],
        )
        ended: dict[str, dict[Labels, float]] = {
            state: {} for state in ("started", "expired", "cancelled", "failed")
        }
        for team, gpu_type, state, n in ledger.line_counts():
            if state == "waiting":
                waiting.add_metric([team, gpu_type], n)
            elif state in ended:
                ended[state][(team, gpu_type)] = float(n)
        yield waiting
        for state, found in ended.items():
            name = "served" if state == "started" else state
            yield self._counter(
                f"gpuhub_waitlist_{name}",
                f"Wait-list requests that ended {state}"
                + (" (their server started)" if state == "started" else "")
                + ".",
                ["team", "gpu_type"],
                found,
            )
        by_labels: dict[Labels, list[float]] = defaultdict(list)
        for team, gpu_type, seconds in ledger.waits():
            by_labels[(team, gpu_type)].append(seconds)
        histogram = HistogramMetricFamily(
            "gpuhub_waitlist_wait_seconds",
            "Time from joining the line to the turn (GPUs held for the person).",
            labels=["team", "gpu_type"],
        )
        for key, values in sorted(by_labels.items()):
            buckets = [
                (str(float(bound)), float(sum(v <= bound for v in values)))
                for bound in WAIT_BUCKETS
            ]
            buckets.append(("+Inf", float(len(values))))
            histogram.add_metric(list(key), buckets, sum_value=sum(values))
        yield histogram


WAIT_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800)
"""Seconds: one minute to eight hours (`waitlist.max_wait`'s default)."""


def metrics_registry(service: GPUHubService, *, user_labels: bool = False) -> CollectorRegistry:
    """The service's registry. Build it once per process and serve that one (its collector
    keeps the counters' high-water marks)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(service, user_labels=user_labels))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
