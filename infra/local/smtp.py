"""A local mail catcher for `make dev`: an aiosmtpd server that saves each message as .eml."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from infra.local.postgres import free_port


class _SaveToFolder:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{time.monotonic_ns()}.eml"
        (self.folder / name).write_bytes(envelope.original_content or envelope.content)
        print(f"• mail for {', '.join(envelope.rcpt_tos)} saved to {self.folder / name}", flush=True)
        return "250 Message accepted for delivery"


class LocalSMTP:
    """Accepts mail on 127.0.0.1:`port` (no TLS, no auth) and writes it under `folder`."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self._controller: Any = None

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.folder.mkdir(parents=True, exist_ok=True)
        self._controller = Controller(_SaveToFolder(self.folder), hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
