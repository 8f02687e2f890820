"""Runs `fly` for the provisioner: checks always run, actions only outside dry runs.

Every command is echoed (`$ fly …`) before it runs, so a dry run prints the whole plan in order.
Secret values never reach argv or the output: they go to `fly secrets import` on stdin, and the
echo names them only.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO


class ProvisionError(Exception):
    """A provisioning step failed or found a state it cannot repair by itself."""


def find_fly(explicit: str | None = None) -> str:
    """The flyctl executable: `explicit`, else `fly` or `flyctl` on PATH (`fly` if neither)."""
    if explicit:
        return explicit
    return shutil.which("fly") or shutil.which("flyctl") or "fly"


class Fly:
    """flyctl, non-interactive."""

    def __init__(self, executable: str, *, dry_run: bool, cwd: Path, out: TextIO = sys.stdout) -> None:
        self.executable = executable
        self.cwd = cwd  # the repository root: build context and the fly.*.toml files
        self.dry_run = dry_run
        self.out = out
        # An inherited FLY_APP would silently retarget commands that forget --app.
        self._env = {k: v for k, v in os.environ.items() if k != "FLY_APP"}

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _echo(self, args: Sequence[str], note: str = "") -> None:
        self.say(f"$ fly {shlex.join(args)}{note}")

    def _run(self, args: Sequence[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.executable, *args],
                input=stdin if stdin is not None else "",
                capture_output=True,
                text=True,
                env=self._env,
                cwd=self.cwd,
                check=False,
                timeout=1800,  # remote builds and deploys take minutes, never this long
            )
        except FileNotFoundError as exc:
            install = "https://fly.io/docs/flyctl/install/"
            raise ProvisionError(f"flyctl not found ({self.executable}); install it: {install}") from exc

    def check(self, *args: str) -> str | None:
        """Run a read-only command; its stdout, or None when it failed (in a dry run only).

        Raises ProvisionError when it fails outside a dry run.
        """
        self._echo(args)
        try:
            result = self._run(args, None)
        except ProvisionError:
            if self.dry_run:
                self.say("  (could not run; assuming nothing exists)")
                return None
            raise
        if result.returncode != 0:
            if self.dry_run:
                self.say("  (failed; assuming nothing exists)")
                return None
            raise ProvisionError(f"`fly {shlex.join(args)}` failed: {result.stderr.strip()[-500:]}")
        return result.stdout

    def act(self, *args: str, secrets: Mapping[str, str] | None = None) -> str:
        """Run a command that changes something; "" in a dry run. Raises ProvisionError on failure.

        `secrets` are fed on stdin as NAME=VALUE lines (for `fly secrets import`).
        """
        stdin = None
        note = ""
        if secrets is not None:
            stdin = "".join(f"{name}={value}\n" for name, value in secrets.items())
            note = f"  < stdin: {', '.join(sorted(secrets))}"
        if self.dry_run:
            self._echo(args, note + "  (dry run: not run)")
            return ""
        self._echo(args, note)
        result = self._run(args, stdin)
        if result.returncode != 0:
            raise ProvisionError(f"`fly {shlex.join(args)}` failed: {result.stderr.strip()[-500:]}")
        return result.stdout
