"""Wire formats of the Machines API (reference section 2.3): ids, times, durations, image refs."""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ADJECTIVES = ("aged", "bold", "calm", "damp", "eager", "fancy", "gentle", "hidden", "icy", "jolly", "keen", "lively")
_NOUNS = ("thunder", "river", "meadow", "forest", "glade", "harbor", "island", "lake", "moon", "night", "ocean")

WAIT_TIMEOUT_MIN_SECONDS = 1.0
WAIT_TIMEOUT_MAX_SECONDS = 60.0  # "timeout defaults to 60s, which is also the max" (reference 3.10)


def machine_id() -> str:
    """A 14-hex-character machine id, e.g. `1857156b526dd8`."""
    return secrets.token_hex(7)


def ulid() -> str:
    """A 26-character ULID (48-bit ms time + 80 random bits, Crockford base32), as instance ids are."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def machine_name() -> str:
    """A generated name like `aged-thunder-7371`."""
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(9000) + 1000}"


def private_ip() -> str:
    """A 6PN-looking IPv6 address (`fdaa:…`)."""
    return "fdaa:0:1:a7b:" + ":".join(f"{secrets.randbits(16):x}" for _ in range(4))


def nonce() -> str:
    return secrets.token_hex(6)


def now_ms() -> int:
    """Event timestamps are Unix epoch milliseconds."""
    return int(time.time() * 1000)


def rfc3339(at: float | None = None) -> str:
    """`created_at`/`updated_at` are RFC 3339 strings."""
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration_seconds(value: Any, *, number_unit_seconds: float) -> float | None:
    """A Go duration string (`"10s"`, `"1m30s"`) or a number (in `number_unit_seconds`) as seconds.

    None for a missing or malformed value. Numbers are ambiguous on this API (fly-go reads them
    as nanoseconds, the docs say seconds for stop), so each caller states its unit.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) * number_unit_seconds
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text) * number_unit_seconds
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def wait_timeout(raw: str | None) -> float | None:
    """The wait timeout in seconds: 60 when absent, None when outside [1, 60] s or malformed.

    The API rejects out-of-range timeouts with invalid_argument (OpenRouterLabs/spawn#1619: "The
    Fly Machines API enforces a `[1s, 1m0s]` range"); fly-go clamps to that range before sending
    (flaps_machines_wait.go). Numbers are seconds, as fly-go sends them.
    """
    if raw is None or raw == "":
        return WAIT_TIMEOUT_MAX_SECONDS
    seconds = parse_duration_seconds(raw, number_unit_seconds=1.0)
    if seconds is None or not WAIT_TIMEOUT_MIN_SECONDS <= seconds <= WAIT_TIMEOUT_MAX_SECONDS:
        return None
    return seconds


def image_ref(image: str) -> dict[str, Any]:
    """`image_ref` parsed from an image string such as `registry.fly.io/app:tag@sha256:…`."""
    rest, _, digest = image.partition("@")
    registry = "registry-1.docker.io"
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, rest = first, remainder
    repository, tag = rest, "latest"
    if ":" in rest.rsplit("/", 1)[-1]:
        repository, _, tag = rest.rpartition(":")
    if registry == "registry-1.docker.io" and "/" not in repository:
        repository = f"library/{repository}"
    return {"registry": registry, "repository": repository, "tag": tag, "digest": digest, "labels": {}}
