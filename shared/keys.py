"""Object keys: where each tenant's uploads and each claim's outputs live, and which keys a
tenant may touch. No I/O and no boto3 here, so any process can use it cheaply."""

from __future__ import annotations

import re
import uuid

from shared.errors import PermanentJobError

# A key segment is plain printable text; no control characters, no backslashes (some stores and
# tools treat them as separators), and never "", "." or ".." (path tricks).
_KEY_SEGMENT = re.compile(r"[^\x00-\x1f\x7f\\]+")


def tenant_prefix(tenant_id: str) -> str:
    """The prefix every object of `tenant_id` lives under."""
    return f"tenants/{tenant_id}/"


def job_prefix(tenant_id: str, job_id: int) -> str:
    """The prefix every output of every attempt of a job lives under."""
    return f"{tenant_prefix(tenant_id)}jobs/{job_id}/"


def claim_prefix(tenant_id: str, job_id: int, claim_token: uuid.UUID) -> str:
    """The prefix of one claim's outputs: `tenants/{tenant}/jobs/{job}/{claim token}/`.

    Each attempt writes under its own claim, so a stalled holder that wakes up can neither
    overwrite nor delete the objects of the attempt that won.
    """
    return f"{job_prefix(tenant_id, job_id)}{claim_token.hex}/"


def upload_key(tenant_id: str, filename: str) -> str:
    """A fresh key for an upload: `tenants/{tenant}/uploads/{uuid}/{filename}`.

    The random segment keeps two uploads of one filename apart and makes keys unguessable.
    """
    return f"{tenant_prefix(tenant_id)}uploads/{uuid.uuid4().hex}/{filename}"


def is_safe_key(key: str) -> bool:
    """True if every `/`-separated segment of `key` is a plain name (no empty, `.` or `..`)."""
    return all(segment not in ("", ".", "..") and _KEY_SEGMENT.fullmatch(segment) for segment in key.split("/"))


def check_tenant_key(tenant_id: str, key: str) -> str:
    """Return `key` if it lies inside the tenant's prefix.

    Raises PermanentJobError (kind "forbidden-key") for a key of another tenant or one that
    could be read as a different path (`..`, `.`, `//`, backslashes, control characters).
    """
    prefix = tenant_prefix(tenant_id)
    if not (is_safe_key(tenant_id) and "/" not in tenant_id and key.startswith(prefix) and is_safe_key(key)):
        raise PermanentJobError(f"key {key!r} is outside this tenant's storage", kind="forbidden-key")
    if len(key) == len(prefix):
        raise PermanentJobError("key names the tenant prefix, not an object", kind="forbidden-key")
    return key
