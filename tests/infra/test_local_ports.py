"""Local servers (Postgres, moto, SMTP, the emulator, test apps) get ports no client can take."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra.local.postgres import free_port


def _ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2]
    return int(low), int(high)


def test_a_server_port_is_below_the_range_client_connections_are_given() -> None:
    """A server restarted on its port (the adversary's Postgres restart, test_db_restart) must find
    it free: an outgoing connection made meanwhile is given a port from the ephemeral range, and a
    listener cannot bind a port that a connected socket holds, even with SO_REUSEADDR."""
    low, _ = _ephemeral_range()
    if low < 21_000:
        pytest.skip("no room below this machine's ephemeral port range")
    ports = [free_port() for _ in range(50)]
    assert all(20_000 <= port < low for port in ports), ports
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free as promised


def test_why_a_client_can_keep_a_server_from_its_port() -> None:
    """The failure the rule above avoids, shown on a port a client connection was given."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            taken = client.getsockname()[1]
            low, high = _ephemeral_range()
            assert low <= taken <= high
            with socket.socket() as restarted:
                restarted.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                with pytest.raises(OSError):
                    restarted.bind(("127.0.0.1", taken))
