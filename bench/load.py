"""HTTP load generator, run as its own process: `python -m bench.load --url ... --body-file ...`.

`--concurrency` clients each keep one HTTP/1.1 keep-alive connection busy with the same request
until `--requests` have been sent or `--duration` seconds have passed, whichever comes first, after
`--warmup` untimed requests. Prints one JSON line: counts, statuses, elapsed, requests/s and
latency percentiles (ms).

Two clients: `raw` (default) writes pre-built request bytes on asyncio streams under uvloop and
parses only the status line and Content-Length, so on a small shared machine the load generator
takes as little CPU as possible away from the server it measures; `httpx` uses httpx.AsyncClient
for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Plan:
    host: str
    port: int
    path: str
    headers: dict[str, str]
    body: bytes
    concurrency: int
    requests: int
    duration: float


@dataclass
class Tally:
    budget: int
    deadline: float = 0.0
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, status: int, seconds: float) -> None:
        """Count an answer; latency percentiles are over successful (2xx) answers only."""
        self.statuses[status] += 1
        if 200 <= status < 300:
            self.latencies.append(seconds)

    def take(self) -> bool:
        if self.sent >= self.budget or time.perf_counter() >= self.deadline:
            return False
        self.sent += 1
        return True


def request_bytes(plan: Plan) -> bytes:
    lines = [f"POST {plan.path} HTTP/1.1", f"Host: {plan.host}:{plan.port}", f"Content-Length: {len(plan.body)}"]
    lines += [f"{name}: {value}" for name, value in plan.headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + plan.body


async def raw_client(plan: Plan, tally: Tally) -> None:
    payload = request_bytes(plan)
    reader, writer = await asyncio.open_connection(plan.host, plan.port)
    try:
        while tally.take():
            started = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
                elif name.strip().lower() == b"transfer-encoding":
                    raise RuntimeError("chunked responses are not supported by the raw client")
            if length:
                await reader.readexactly(length)
            tally.record(status, time.perf_counter() - started)
    except (OSError, asyncio.IncompleteReadError, RuntimeError) as exc:
        tally.errors[type(exc).__name__] += 1
    finally:
        writer.close()


async def httpx_client(plan: Plan, tally: Tally, client: object) -> None:
    import httpx

    assert isinstance(client, httpx.AsyncClient)
    url = f"http://{plan.host}:{plan.port}{plan.path}"
    while tally.take():
        started = time.perf_counter()
        try:
            response = await client.post(url, content=plan.body, headers=plan.headers)
        except httpx.HTTPError as exc:
            tally.errors[type(exc).__name__] += 1
            continue
        tally.record(response.status_code, time.perf_counter() - started)


async def phase(plan: Plan, budget: int, *, kind: str) -> tuple[Tally, float]:
    tally = Tally(budget=budget)
    tally.deadline = time.perf_counter() + plan.duration
    started = time.perf_counter()
    if kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
        async with httpx.AsyncClient(limits=limits, timeout=60, trust_env=False) as client:
            await asyncio.gather(*(httpx_client(plan, tally, client) for _ in range(plan.concurrency)))
    else:
        await asyncio.gather(*(raw_client(plan, tally) for _ in range(plan.concurrency)))
    return tally, time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    headers = {"Content-Type": "application/json"}
    for item in args.header:
        name, _, value = item.partition(":")
        headers[name.strip()] = value.strip()
    with open(args.body_file, "rb") as f:
        body = f.read()
    plan = Plan(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 80,
        path=parts.path or "/",
        headers=headers,
        body=body,
        concurrency=args.concurrency,
        requests=args.requests,
        duration=args.duration,
    )
    if args.warmup:
        await phase(plan, args.warmup, kind=args.client)
    tally, elapsed = await phase(plan, plan.requests, kind=args.client)
    ok = sum(n for status, n in tally.statuses.items() if 200 <= status < 300)
    ms = [v * 1000 for v in tally.latencies]
    return {
        "client": args.client,
        "concurrency": plan.concurrency,
        "sent": tally.sent,
        "ok": ok,
        "statuses": {str(k): v for k, v in tally.statuses.items()},
        "errors": dict(tally.errors),
        "elapsed": elapsed,
        "rps": ok / elapsed if elapsed > 0 else 0.0,
        "p50_ms": pct(ms, 50),
        "p90_ms": pct(ms, 90),
        "p99_ms": pct(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[], help="Name: value (repeatable)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=1000, help="measured requests at most")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds at most per phase")
    parser.add_argument("--warmup", type=int, default=100, help="untimed requests first")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw")
    args = parser.parse_args(argv)
    try:
        import uvloop

        result = uvloop.run(main_async(args))
    except ImportError:  # pragma: no cover - uvloop is installed with uvicorn[standard]
        result = asyncio.run(main_async(args))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
