"""GET /metrics: Prometheus text from this process's registry plus the database, read at scrape time.

In-process: HTTP request counts and latency by route template (never the raw path, whose ids
would explode the label set) and the telemetry events this process emitted.

From the database, at scrape time, because the work happens in function machines that are
separate short-lived processes nobody scrapes, and because queue state is fleet-wide:
- queue_limit, queue_running, queue_state (0 stopped, 1 running, 2 paused), queue_available,
  queue_scheduled, queue_retryable, queue_depth, queue_oldest_available_age_seconds;
- job_outcomes_total{queue,state}: final jobs, including those the pruner already deleted
  (migrations/0002). A manual retry moves a job out of `discarded`/`cancelled`, the one case
  where that count can go down;
- job_wait_seconds and job_run_seconds: gauge histograms over the last DURATION_WINDOW_SECONDS
  (wait: due -> attempt started; run: started -> completed or discarded). They describe recent
  jobs, not all jobs ever, so read them directly (histogram_quantile without rate());
- machine_launches_total{queue,launcher} (pruned machines included, migrations/0004),
  machines_live{queue,launcher}, and machine_launch_latency_seconds (launched -> first seen
  running), a gauge histogram like above;
- queue_boot_failures{queue}: machines that failed at boot since the queue's last machine that
  booted (while above 0 the dispatcher spaces that queue's launches out exponentially);
- dispatcher_duty_errors_total{duty}: failures of each dispatcher duty. Counted in the database
  because the dispatcher may run in a process of its own that nobody scrapes;
- queue_tenant_available, queue_tenant_running, queue_tenant_waiting and queue_tenant_throttled
  {queue,tenant}: per tenant, the TOP_TENANTS busiest of each queue and the rest summed as
  tenant="other", so the label set stays bounded however many tenants there are.

From the in-process dispatcher's launcher: launcher_alerts{kind}, 1 while an alert lasts.

Every instance reports the same database-derived numbers; aggregate them with max(), not sum().
"""

from __future__ import annotations

import hmac
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from functions.dispatcher.scaler import boot_failures
from shared.db import job_store, queue_rules
from shared.db.models import QueueStatus
from shared.db.pool import Pool
from shared.errors import Unauthorized
from shared.metrics import DURATION_BUCKETS, EventMetrics
from shared.settings import Settings

from .event_hub import EventHub
from .sql import QUERIES

DURATION_WINDOW_SECONDS: Final = 300
TOP_TENANTS: Final = 10  # tenants with their own label per queue; the rest are tenant="other"
QUEUE_STATE_VALUES: Final[Mapping[str, int]] = {"stopped": 0, "running": 1, "paused": 2}
_CONVERTER = re.compile(r":\w+}")


class AppMetrics:
    """The registry of one app: HTTP metrics and the telemetry events it sees."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["method", "route"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.events = EventMetrics(self.registry)
        # Labelled children by (method, route, status): `labels()` costs a lock and a lookup per call.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count and time one answered HTTP request."""
        key = (method, route, str(status))
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(method=method, route=route, status=key[2]),
                self.latency.labels(method=method, route=route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def start(self) -> None:
        self.events.start()

    def close(self) -> None:
        self.events.close()


_TEMPLATES: dict[str, str] = {}  # route path -> template; routes are few and fixed


def route_template(scope: Scope) -> str:
    """The matched route's path template (`/jobs/{job_id}`), or `unmatched`."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return "unmatched"
    template = _TEMPLATES.get(path)
    if template is None:
        template = _TEMPLATES[path] = _CONVERTER.sub("}", path) or "/"
    return template


class EventHubCollector(Collector):
    """The live-event hub of this API process: open streams, events seen, streams dropped."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "event_streams",
            "Event streams and ?wait requests open on this API process.",
            value=self.hub.subscriber_count,
        )
        yield CounterMetricFamily(
            "job_events_received", "Job events this API process received from Postgres.", value=self.hub.received_total
        )
        yield CounterMetricFamily(
            "event_streams_dropped",
            "Event streams dropped because their client did not keep up (it reconnects and resumes).",
            value=self.hub.dropped_total,
        )


class _Snapshot(Collector):
    """Metric families already read from the database, for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _cumulative(counts: Mapping[int, int], bounds: Sequence[float]) -> list[tuple[str, float]]:
    """Prometheus `le` buckets from width_bucket counts (bucket k holds bounds[k-1] <= x < bounds[k])."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for index, bound in enumerate(bounds, start=1):
        running += counts.get(index - 1, 0)
        buckets.append((str(bound), float(running)))
    running += counts.get(len(bounds), 0)
    buckets.append(("+Inf", float(running)))
    return buckets


def _gauge_histogram(
    name: str, doc: str, labels: Sequence[str], rows: Iterable[tuple[tuple[str, ...], int, int, float]]
) -> GaugeHistogramMetricFamily:
    """One gauge histogram from (label values, width_bucket index, count, sum) rows."""
    counts: dict[tuple[str, ...], dict[int, int]] = defaultdict(dict)
    sums: dict[tuple[str, ...], float] = defaultdict(float)
    for key, bucket, count, total in rows:
        counts[key][bucket] = counts[key].get(bucket, 0) + count
        sums[key] += total
    family = GaugeHistogramMetricFamily(name, doc, labels=list(labels))
    for key in sorted(counts):
        family.add_metric(list(key), _cumulative(counts[key], DURATION_BUCKETS), gsum_value=sums[key])
    return family


def queue_families(statuses: Sequence[QueueStatus]) -> list[Metric]:
    """The queue gauges, one sample per queue."""
    gauges: dict[str, tuple[str, Any]] = {
        "queue_limit": ("Concurrency limit of the queue, fleet-wide.", lambda s: s.limit),
        "queue_running": ("Jobs executing now.", lambda s: s.running),
        "queue_state": ("0 stopped (limit 0), 1 running, 2 paused.", lambda s: QUEUE_STATE_VALUES[s.state]),
        "queue_available": ("Jobs waiting to run now.", lambda s: s.available),
        "queue_scheduled": ("Jobs waiting for their scheduled time.", lambda s: s.scheduled),
        "queue_retryable": ("Jobs waiting to be retried.", lambda s: s.retryable),
        "queue_depth": ("Jobs not yet finished or running: available + scheduled + retryable.", None),
        "queue_oldest_available_age_seconds": (
            "How long the oldest available job has been due.",
            lambda s: s.oldest_available_age_seconds,
        ),
    }
    families: list[Metric] = []
    for name, (doc, value) in gauges.items():
        family = GaugeMetricFamily(name, doc, labels=["queue"])
        for status in statuses:
            number = status.available + status.scheduled + status.retryable if value is None else value(status)
            family.add_metric([status.name], float(number))
        families.append(family)
    return families


def tenant_families(stats: Sequence[queue_rules.TenantStats]) -> list[Metric]:
    """Per-tenant gauges: each queue's TOP_TENANTS busiest tenants, then `other`."""
    by_queue: dict[str, list[queue_rules.TenantStats]] = defaultdict(list)
    for one in stats:  # already busiest first within each queue
        by_queue[one.queue].append(one)
    gauges: dict[str, tuple[str, Any]] = {
        "queue_tenant_available": ("A tenant's due jobs waiting for a claim.", lambda t: t.due),
        "queue_tenant_running": ("A tenant's jobs executing now.", lambda t: t.running),
        "queue_tenant_waiting": ("A tenant's scheduled or retryable jobs.", lambda t: t.waiting),
        "queue_tenant_throttled": (
            "A tenant's due jobs held back now by its cap or its rate window.",
            lambda t: t.throttled,
        ),
    }
    families: list[Metric] = []
    for name, (doc, value) in gauges.items():
        family = GaugeMetricFamily(name, doc, labels=["queue", "tenant"])
        for queue in sorted(by_queue):
            for one in queue_rules.top_tenants(by_queue[queue], TOP_TENANTS):
                family.add_metric([queue, one.tenant_id], float(value(one)))
        families.append(family)
    return families


async def database_families(pool: Pool, *, boot_grace_seconds: float = 30.0) -> list[Metric]:
    """Every database-derived family, read in one pooled connection."""
    bounds = list(DURATION_BUCKETS)
    window = {"window_seconds": DURATION_WINDOW_SECONDS, "bounds": bounds}
    async with pool.connection() as conn:
        statuses = await job_store.queue_statuses(conn)
        outcomes = await (await conn.execute(QUERIES["metrics_job_outcomes"])).fetchall()
        durations = await (await conn.execute(QUERIES["metrics_job_durations"], window)).fetchall()
        machines = await (await conn.execute(QUERIES["metrics_machines"])).fetchall()
        boots = await (await conn.execute(QUERIES["metrics_machine_boot"], window)).fetchall()
        boot_failed = await boot_failures(
            conn, [status.name for status in statuses], boot_grace_seconds=boot_grace_seconds
        )
        duty_errors = await (await conn.execute(QUERIES["metrics_duty_errors"])).fetchall()
        tenants = await queue_rules.tenant_stats(conn)
    families = queue_families(statuses) + tenant_families(tenants)
    outcome_family = CounterMetricFamily(
        "job_outcomes", "Jobs that reached a final state (pruned ones included).", labels=["queue", "state"]
    )
    for row in outcomes:
        outcome_family.add_metric([row["queue"], row["state"]], float(row["n"]))
    families.append(outcome_family)
    for kind, doc in (
        ("wait", "Due -> attempt started, jobs of the last 5 minutes."),
        ("run", "Attempt started -> completed or discarded, jobs of the last 5 minutes."),
    ):
        rows = [((r["queue"],), r["bucket"], r["n"], r["total"]) for r in durations if r["kind"] == kind]
        families.append(_gauge_histogram(f"job_{kind}_seconds", doc, ["queue"], rows))
    launches = CounterMetricFamily("machine_launches", "Function machines launched.", labels=["queue", "launcher"])
    live = GaugeMetricFamily("machines_live", "Function machines launching or running.", labels=["queue", "launcher"])
    for row in machines:
        launches.add_metric([row["queue"], row["launcher"]], float(row["launched"]))
        live.add_metric([row["queue"], row["launcher"]], float(row["live"]))
    families += [launches, live]
    boot_rows = [((r["queue"],), r["bucket"], r["n"], r["total"]) for r in boots]
    families.append(
        _gauge_histogram(
            "machine_launch_latency_seconds",
            "Launched -> first seen running, machines of the last 5 minutes.",
            ["queue"],
            boot_rows,
        )
    )
    failing = GaugeMetricFamily(
        "queue_boot_failures",
        "Machines that failed at boot since the queue's last machine that booted (launches back off).",
        labels=["queue"],
    )
    for boot in boot_failed:
        failing.add_metric([boot.queue], float(boot.failures))
    errors = CounterMetricFamily("dispatcher_duty_errors", "Failures of each dispatcher duty.", labels=["duty"])
    for row in duty_errors:
        errors.add_metric([row["duty"]], float(row["errors"]))
    families += [failing, errors]
    return families


def alert_families(dispatcher: object) -> list[Metric]:
    """`launcher_alerts{kind}`: 1 while the in-process dispatcher's launcher raises an alert (e.g.
    the Fly token alert, `auth`), for alerting rules; the alert itself shows in /health."""
    alerts = getattr(getattr(dispatcher, "launcher", None), "alerts", None)
    family = GaugeMetricFamily("launcher_alerts", "Alerts the launcher raises now, by kind.", labels=["kind"])
    for alert in alerts() if callable(alerts) else []:
        family.add_metric([str(alert["kind"])], 1.0)
    return [family]


def _check_metrics_token(request: Request, settings: Settings) -> None:
    if settings.metrics_token is None:
        return
    kind, _, token = request.headers.get("authorization", "").partition(" ")
    expected = settings.metrics_token.get_secret_value().encode()
    if kind.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
        raise Unauthorized("send Authorization: Bearer <METRICS_TOKEN>", headers={"WWW-Authenticate": "Bearer"})


async def metrics_endpoint(request: Request) -> Response:
    """GET /metrics: Prometheus text; protected by METRICS_TOKEN when it is set."""
    settings: Settings = request.app.state.settings
    _check_metrics_token(request, settings)
    metrics: AppMetrics = request.app.state.metrics
    snapshot = CollectorRegistry(auto_describe=False)
    families = await database_families(request.app.state.pool, boot_grace_seconds=settings.machine_boot_grace_seconds)
    families += alert_families(getattr(request.app.state, "dispatcher", None))
    snapshot.register(_Snapshot(families))
    body = generate_latest(metrics.registry) + generate_latest(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
