"""Loopback webhook receiver, run as its own process: `python -m bench.receiver --port P`.

Answers every POST with 200 (HTTP/1.1 keep-alive) and counts deliveries by the `"seq": <n>` in
the body (the end-to-end bench puts a sequence number in each webhook's payload), so lost and
duplicated deliveries are counted where they land. `GET /stats` answers a JSON object: requests,
distinct seqs, duplicates, unparsed bodies, and the wall-clock (time.time()) of the first and the
last delivery; `POST /reset` forgets everything. Written on bare asyncio streams so it takes as
little CPU as possible from what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import time
from collections import Counter
from typing import Any

SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Tally:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seqs: Counter[int] = Counter()
        self.requests = 0
        self.unparsed = 0
        self.first = 0.0
        self.last = 0.0

    def record(self, body: bytes) -> None:
        now = time.time()
        self.requests += 1
        if not self.first:
            self.first = now
        self.last = now
        match = SEQ.search(body)
        if match is None:
            self.unparsed += 1
        else:
            self.seqs[int(match.group(1))] += 1

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "distinct": len(self.seqs),
            "duplicates": sum(n - 1 for n in self.seqs.values()),
            "unparsed": self.unparsed,
            "min_seq": min(self.seqs, default=None),
            "max_seq": max(self.seqs, default=None),
            "first": self.first,
            "last": self.last,
        }


async def handle(tally: Tally, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.split(b"\r\n")
            method, _, rest = lines[0].partition(b" ")
            path = rest.partition(b" ")[0]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            body = await reader.readexactly(length) if length else b""
            if method == b"GET" and path == b"/stats":
                data = json.dumps(tally.stats()).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(data)).encode()
                    + b"\r\n\r\n"
                    + data
                )
            elif method == b"POST" and path == b"/reset":
                tally.reset()
                writer.write(OK)
            else:
                tally.record(body)
                writer.write(OK)
            await writer.drain()
    finally:
        writer.close()


async def serve(port: int) -> None:
    tally = Tally()
    server = await asyncio.start_server(lambda r, w: handle(tally, r, w), "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.close()  # open keep-alive connections are cancelled with the loop, not waited for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.receiver")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
