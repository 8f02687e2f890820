"""The overview's figures: per queue counts, and the last hour as two server-rendered bar charts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

from shared.db.job_store import Conn

from .sql import QUERIES

WINDOW_SECONDS: Final = 3600
BUCKET_SECONDS: Final = 300  # twelve five-minute bars
BUCKETS: Final = WINDOW_SECONDS // BUCKET_SECONDS


@dataclass
class QueueRow:
    name: str
    limit: int
    paused: bool
    machines: int
    available: int = 0
    scheduled: int = 0
    executing: int = 0
    retryable: int = 0
    completed_hour: int = 0
    discarded_hour: int = 0
    oldest_wait_seconds: float | None = None


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # what the bar says, for its <title> and the table beside the chart


@dataclass
class Chart:
    title: str
    unit: str
    values: list[float]
    labels: list[str]
    bars: list[Bar] = field(default_factory=list)
    peak: float = 0.0

    WIDTH: ClassVar[float] = 360.0
    HEIGHT: ClassVar[float] = 120.0

    def __post_init__(self) -> None:
        self.peak = max(self.values, default=0.0)
        scale = self.peak or 1.0
        step = self.WIDTH / max(len(self.values), 1)
        for i, (value, label) in enumerate(zip(self.values, self.labels, strict=True)):
            height = round(value / scale * (self.HEIGHT - 4), 1) if value else 0.0
            self.bars.append(
                Bar(
                    x=round(i * step + 2, 1),
                    y=round(self.HEIGHT - height, 1),
                    width=round(step - 4, 1),
                    height=height,
                    label=f"{label}: {self.fmt(value)}",
                )
            )

    def fmt(self, value: float) -> str:
        return f"{value:.0f}{self.unit}"


@dataclass
class Overview:
    queues: list[QueueRow]
    throughput: Chart
    failure_rate: Chart
    at: datetime


def outcome_params(tenant: str | None, now: datetime) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "now": now,
        "since": now - timedelta(seconds=WINDOW_SECONDS),
        "bucket_seconds": BUCKET_SECONDS,
    }


async def load(conn: Conn, tenant: str | None) -> Overview:
    cur = await conn.execute(QUERIES["dashboard_queues"])
    rows = {
        r["name"]: QueueRow(name=r["name"], limit=r["limit"], paused=r["paused"], machines=r["machines"])
        for r in await cur.fetchall()
    }
    now = datetime.now(UTC)
    cur = await conn.execute(QUERIES["dashboard_live_counts"], {"tenant_id": tenant})
    for r in await cur.fetchall():
        row = rows.get(r["queue"])
        if row is None:
            continue  # a queue no function serves any more: its jobs are still in the jobs list
        setattr(row, r["state"], r["n"])
        if r["oldest_due"] is not None:
            row.oldest_wait_seconds = max((now - r["oldest_due"]).total_seconds(), 0.0)
    completed = [0.0] * BUCKETS
    discarded = [0.0] * BUCKETS
    cur = await conn.execute(QUERIES["dashboard_recent_outcomes"], outcome_params(tenant, now))
    for r in await cur.fetchall():
        index = BUCKETS - 1 - min(max(r["buckets_ago"], 0), BUCKETS - 1)  # oldest bar on the left
        row = rows.get(r["queue"])
        if r["state"] == "completed":
            completed[index] += r["n"]
            if row:
                row.completed_hour += r["n"]
        elif r["state"] == "discarded":
            discarded[index] += r["n"]
            if row:
                row.discarded_hour += r["n"]
    labels = [
        f"{(BUCKETS - i) * BUCKET_SECONDS // 60} to {(BUCKETS - i - 1) * BUCKET_SECONDS // 60} min ago"
        for i in range(BUCKETS)
    ]
    rate = [100.0 * d / (c + d) if c + d else 0.0 for c, d in zip(completed, discarded, strict=True)]
    return Overview(
        queues=list(rows.values()),
        throughput=Chart(title="Jobs completed per 5 minutes", unit="", values=completed, labels=labels),
        failure_rate=Chart(
            title="Failure rate (discarded ÷ finished) per 5 minutes", unit="%", values=rate, labels=labels
        ),
        at=now,
    )
