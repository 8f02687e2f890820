"""A throwaway or persistent local PostgreSQL cluster for `make dev` and the tests.

Uses the machine's PostgreSQL binaries. Postgres refuses to run as root, so when we are root
the cluster runs as the `postgres` system user (created when missing).
"""

from __future__ import annotations

import glob
import os
import pwd
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path


def find_bindir() -> Path:
    """Directory holding initdb/pg_ctl/postgres. Raises RuntimeError when none is installed."""
    candidates = [os.environ.get("PG_BINDIR", "")]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout
        candidates.append(out.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists() and (Path(candidate) / "postgres").exists():
            return Path(candidate)
    raise RuntimeError("PostgreSQL server binaries not found; run `make deps` (installs postgresql)")


# Servers get ports below the kernel's ephemeral range. A server restarted on an ephemeral port can
# find it taken: while it was down, any outgoing connection (a test's request, a pool retrying
# another service) may have been given that port as its own end, and a listener cannot bind a port
# a connected socket holds, SO_REUSEADDR or not. A soak's Postgres restart failed that way, likely.
_FIRST_PORT = 20_000
# Its own generator: code under test may seed the module's (hypothesis does, to a constant, in
# every example), and then every process would draw the same port.
_PORTS = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing uses right now, below the ephemeral range when it can
    (see _FIRST_PORT), so that a server restarted on it finds it free again."""
    low = _ephemeral_low()
    if low - _FIRST_PORT >= 1_000:
        for _ in range(100):
            port = _PORTS.randrange(_FIRST_PORT, low)
            if _bindable(port):
                return port
    with socket.socket() as sock:  # no room below the ephemeral range: any port the kernel picks
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> list[str]:
    """Command prefix that drops root to the `postgres` user; empty when not root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


class LocalPostgres:
    """A cluster in `data_dir`, listening on 127.0.0.1:`port` with trust auth."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.durable = durable
        self.bindir = find_bindir()
        self.prefix = _run_as()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _own(self, path: Path) -> None:
        if self.prefix:
            pg = pwd.getpwnam("postgres")
            for root, dirs, files in os.walk(path):
                for name in [*dirs, *files]:
                    os.chown(os.path.join(root, name), pg.pw_uid, pg.pw_gid)
            os.chown(path, pg.pw_uid, pg.pw_gid)

    def _reachable(self) -> None:
        """The postgres user must be able to reach the data directory through its parents. Checked
        at every start, not only at init: another pytest session resets /tmp/pytest-of-<user> to
        0700 when it starts, which made a cluster that a test restarted unreachable."""
        if self.prefix:
            for parent in self.data_dir.parents:
                if parent.stat().st_uid == os.geteuid() and not parent.stat().st_mode & 0o001:
                    parent.chmod(parent.stat().st_mode | 0o011)

    def init(self) -> None:
        """Create the cluster unless it already exists."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._own(self.data_dir)
        self._reachable()
        cmd = [
            *self.prefix,
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]
        if not self.durable:
            cmd.append("--no-sync")
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr.strip()}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.init()
        self._reachable()
        if (self.data_dir / "postmaster.pid").exists():
            self.stop("fast")  # a server left over from an earlier run; start afresh on our port
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c max_connections=300"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        log = self.data_dir / "server.log"
        started = subprocess.run(
            [
                *self.prefix,
                str(self.bindir / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                str(log),
                "-o",
                options,
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:  # say why: the server's own log is in a temp dir soon gone
            tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
            raise RuntimeError(
                f"pg_ctl start failed ({started.returncode}) on port {self.port}: {started.stderr.strip()}\n"
                + "\n".join(tail)
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"postgres did not start; see {log}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (no error when it is not running)."""
        if not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            [*self.prefix, str(self.bindir / "pg_ctl"), "stop", "-w", "-m", mode, "-D", str(self.data_dir)],
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        """Stop and delete the cluster."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
