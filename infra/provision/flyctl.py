"""Runs `fly` for the provisioner: checks always run, actions only outside dry runs.

Every command is echoed (`$ fly …`) before it runs, so a dry run prints the whole plan in order.
Secret values never reach argv (other users of the machine can read a process's arguments) nor
the output: they go to flyctl on stdin, and the echo names them only.

Writing secrets so that every byte survives (github.com/superfly/flyctl at ad0172f):
- `fly secrets import` reads stdin like a dotenv file (internal/command/secrets/parser.go): a value
  is cut at its first `#` unless an odd number of `"` precede it, loses one pair of surrounding
  `"` or `'` and its leading spaces, spans lines only inside `\"\"\"…\"\"\"`, loses a trailing CR,
  and scanning stops silently at a line of 64 KiB (bufio.Scanner's error is never checked).
  `parse_import` is that parser; `import_entry` tries the plain, quoted and triple-quoted forms of
  a value and keeps the first one the parser gives back exactly.
- `fly secrets set NAME=-` reads one value from stdin, whole but trimmed of white space, at most
  64 KiB (secrets/set.go, helpers/stdin.go ReadStdin): for what no import form carries.
- Anything else (white space at an end and a `#` no quoting protects, or over 64 KiB) is refused
  before anything is written, rather than passed on argv or stored altered.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

_SCAN_MAX = 64 * 1024  # bufio.MaxScanTokenSize: a longer line ends the import silently
_STDIN_MAX = 64 * 1024  # helpers.ReadStdin(64 * 1024) in `secrets set NAME=-`
# Go's unicode.IsSpace, which strings.TrimSpace trims.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
_GO_SPACE += "\u2028\u2029\u202f\u205f\u3000"
_SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ProvisionError(Exception):
    """A provisioning step failed or found a state it cannot repair by itself."""


def find_fly(explicit: str | None = None) -> str:
    """The flyctl executable: `explicit`, else `fly` or `flyctl` on PATH (`fly` if neither)."""
    if explicit:
        return explicit
    return shutil.which("fly") or shutil.which("flyctl") or "fly"


def _scan_lines(text: str) -> Iterator[str]:
    """bufio.Scanner with ScanLines: lines without their newline or a trailing CR; stops at 64 KiB."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for line in lines:
        if len(line.encode()) >= _SCAN_MAX:
            return
        yield line.removesuffix("\r")


def parse_import(text: str) -> dict[str, str]:
    """What `fly secrets import` makes of `text`: flyctl's parseSecrets, step for step.

    Raises ValueError where flyctl fails (a line without `=`, a lone quote as the value).
    """
    secrets: dict[str, str] = {}
    block: list[str] | None = None  # inside a """ block
    key = ""
    for line in _scan_lines(text):
        if block is not None:
            if line.endswith('"""'):
                secrets[key] = "".join([*block, line[:-3]])
                block = None
            else:
                block.append(line + "\n")
            continue
        if line.startswith("#") or not line.strip(_GO_SPACE):
            continue
        if "=" not in line:
            raise ValueError("Secrets must be provided as NAME=VALUE pairs")
        name, value = line.split("=", 1)
        key, value = name.strip(_GO_SPACE), value.lstrip(" ")
        before, cut, _ = value.partition("#")
        if cut and before.count('"') % 2 == 0:
            value = before.rstrip(" ")
        if value.startswith('"""') and value.endswith('"""') and len(value) >= 6:
            secrets[key] = value[3:-3]
        elif value.startswith('"""'):
            block = [value[3:], "\n"]
        else:
            if value[:1] in ('"', "'") and value.endswith(value[0]):
                if len(value) < 2:
                    raise ValueError("flyctl panics on a value of one quote")
                value = value[1:-1]
            secrets[key] = value
    return secrets


def import_entry(name: str, value: str) -> str | None:
    """A `fly secrets import` entry that gives back exactly `value`, or None if no form does."""
    for form in (value, f'"{value}"', f'"""{value}"""'):
        entry = f"{name}={form}\n"
        try:
            if parse_import(entry) == {name: value}:
                return entry
        except ValueError:
            continue
    return None


def survives_stdin(value: str) -> bool:
    """Whether `fly secrets set NAME=-` stores `value` as it is (trimmed, at most 64 KiB)."""
    return value == value.strip(_GO_SPACE) and len(value.encode()) <= _STDIN_MAX


def _encodable(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:  # undecodable bytes of the environment (surrogate escapes)
        return False
    return True


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
            # Bytes in and out: text mode would use the locale's encoding and translate newlines.
            done = subprocess.run(
                [self.executable, *args],
                input=(stdin or "").encode(),
                capture_output=True,
                env=self._env,
                cwd=self.cwd,
                check=False,
                timeout=1800,  # remote builds and deploys take minutes, never this long
            )
        except FileNotFoundError as exc:
            install = "https://fly.io/docs/flyctl/install/"
            raise ProvisionError(f"flyctl not found ({self.executable}); install it: {install}") from exc
        stdout, stderr = (stream.decode("utf-8", "replace") for stream in (done.stdout, done.stderr))
        return subprocess.CompletedProcess(done.args, done.returncode, stdout, stderr)

    def check(self, *args: str, exists: bool = True) -> str | None:
        """Run a read-only command; its stdout, or None when it did not run (in a dry run only).

        `exists=False`: what it reads is created earlier in this dry run, so it is only printed.
        Raises ProvisionError when it fails outside a dry run.
        """
        if self.dry_run and not exists:
            self._echo(args, "  (dry run: not run)")
            return None
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

    def act(self, *args: str, stdin: str | None = None, stdin_names: Sequence[str] = ()) -> str:
        """Run a command that changes something; "" in a dry run. Raises ProvisionError on failure.

        `stdin` is fed to the command; the echo names `stdin_names` instead of showing it.
        """
        note = f"  < stdin: {', '.join(stdin_names)}" if stdin_names else ""
        if self.dry_run:
            self._echo(args, note + "  (dry run: not run)")
            return ""
        self._echo(args, note)
        result = self._run(args, stdin)
        if result.returncode != 0:
            message = result.stderr
            # flyctl quotes a line it cannot parse: never let a secret through in the message.
            for piece in sorted({stdin or "", *(stdin or "").splitlines()} - {""}, key=len, reverse=True):
                message = message.replace(piece, "<secret>")
            raise ProvisionError(f"`fly {shlex.join(args)}` failed: {message.strip()[-500:]}")
        return result.stdout

    def set_secrets(self, app: str, values: Mapping[str, str]) -> None:
        """Stage `values` on `app` byte for byte: one `secrets import`, plus `secrets set NAME=-` for
        values no import entry carries. Raises ProvisionError, before writing anything, for a value
        neither carries."""
        entries: dict[str, str] = {}
        piped: list[str] = []
        for name, value in values.items():
            if not _SECRET_NAME.fullmatch(name):
                raise ProvisionError(f"{name!r} is not a secret name")
            if not _encodable(value):
                raise ProvisionError(f"{name} is not valid text; set it by hand")
            entry = import_entry(name, value)
            if entry is not None:
                entries[name] = entry
            elif survives_stdin(value):
                piped.append(name)
            else:
                raise ProvisionError(
                    f"flyctl cannot store {name} unchanged (white space at an end together with a '#' or quotes "
                    f"no quoting protects, or more than 64 KiB); set it by hand: `fly secrets set --app {app} {name}=…`"
                )
        stage = ("--app", app, "--stage")  # the deploy (or `secrets deploy`) at the end applies them
        if entries:
            text = "".join(entries.values())
            if parse_import(text) != {name: values[name] for name in entries}:  # each entry was checked alone
                raise ProvisionError(f"internal error: the import for {app} would not read back as written")
            self.act("secrets", "import", *stage, stdin=text, stdin_names=sorted(entries))
        for name in piped:  # ReadStdin takes one value per call
            self.act("secrets", "set", *stage, f"{name}=-", stdin=values[name], stdin_names=[name])
