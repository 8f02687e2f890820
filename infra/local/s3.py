"""A local S3-compatible server (moto in server mode) for `make dev` and the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from infra.local.postgres import free_port

# moto accepts any credentials; these only have to be the same on both sides.
LOCAL_ACCESS_KEY = "local-dev-key"
LOCAL_SECRET_KEY = "local-dev-secret"  # noqa: S105 - not a secret: moto's local server accepts anything


class LocalS3:
    """moto_server on 127.0.0.1:`port`, run as a subprocess."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
