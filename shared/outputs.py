"""A job's outputs: facts the machine records as a handler stores objects, never data it returns.

A handler stores through its attempt's `OutputWriter`, which only hands out keys under the claim's
own prefix (`tenants/{tenant}/jobs/{job}/{claim token}/{filename}`) and remembers every key it
handed out. The machine builds `result["outputs"]` from what the writer recorded (anything a
handler or a user-shaped result calls "outputs" is dropped), withdraws exactly those keys when the
attempt turns out to have lost its claim, and the API presigns only keys under the prefix of the
claim that completed the job. No request can make a job name, download or delete an object
outside its own claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from shared.errors import PermanentJobError
from shared.keys import claim_prefix, is_safe_key

if TYPE_CHECKING:
    from shared.storage import TenantStorage  # boto3: loaded only by machines that store

logger = logging.getLogger(__name__)

OUTPUTS = "outputs"  # the result field the machine owns
PRESENTED = frozenset({"url", "expiresAt"})  # an output's fields the API adds when it presents it


class OutputWriter:
    """Where one attempt stores its objects; every method but `outputs` is blocking (boto3)."""

    def __init__(self, storage: Callable[[], TenantStorage], *, tenant_id: str, job_id: int, claim_token: UUID) -> None:
        self._storage = storage  # built on first use: most machines never touch storage
        self.prefix = claim_prefix(tenant_id, job_id, claim_token)
        self._reserved: list[str] = []
        self._recorded: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # handlers store from worker threads

    def key_for(self, filename: str) -> str:
        """Reserve the key of `filename` under this claim (withdrawn with the attempt if it loses).

        Raises PermanentJobError kind "invalid-output-name" unless `filename` is one plain segment.
        """
        if "/" in filename or not is_safe_key(filename):
            raise PermanentJobError(f"output name {filename!r} is not a plain file name", kind="invalid-output-name")
        key = self.prefix + filename
        with self._lock:
            if key not in self._reserved:
                self._reserved.append(key)
        return key

    def store_bytes(self, filename: str, data: bytes, content_type: str) -> tuple[str, int]:
        """Store `data` as `filename`; returns (key, size). Not reported until `record`."""
        key = self.key_for(filename)
        return key, self._storage().put_bytes(key, data, content_type)

    def record(self, *, name: str, key: str, content_type: str, size: int, **facts: Any) -> dict[str, Any]:
        """Report a stored object as an output of the job (in the order of the calls)."""
        if PRESENTED & facts.keys():
            raise ValueError(f"an output's {sorted(PRESENTED)} are the API's, never recorded")
        with self._lock:
            if key not in self._reserved:
                raise ValueError(f"{key!r} was not reserved by this attempt")
            entry = {"name": name, "key": key, "contentType": content_type, "size": size, **facts}
            self._recorded.append(entry)
        return entry

    def put_bytes(
        self, filename: str, data: bytes, content_type: str, *, name: str | None = None, **facts: Any
    ) -> dict[str, Any]:
        """Store `data` as `filename` and record it as the output `name` (default: the file name)."""
        key, size = self.store_bytes(filename, data, content_type)
        return self.record(name=name or filename, key=key, content_type=content_type, size=size, **facts)

    @property
    def outputs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._recorded]

    @property
    def reserved(self) -> list[str]:
        with self._lock:
            return list(self._reserved)

    def withdraw(self) -> int:
        """Delete every object this attempt may have stored (it lost its claim); returns how many
        deletes went through. Only this claim's keys are ever named, so nothing else can go."""
        deleted = 0
        for key in self.reserved:
            try:
                self._storage().delete(key)
                deleted += 1
            except Exception:
                logger.warning("could not delete a withdrawn output", extra={"key": key}, exc_info=True)
        return deleted


def final_result(result: dict[str, Any], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The result to record: the handler's facts, with `outputs` replaced by what was recorded."""
    final = {name: value for name, value in result.items() if name != OUTPUTS}
    if outputs:
        final[OUTPUTS] = outputs
    return final


def completing_key(output: object, prefix: str | None) -> str | None:
    """The output's key when the completing claim stored it (`prefix`: that claim's, None when
    the job has no claim): under the prefix and a plain key. Only such outputs are ever linked."""
    key = output.get("key") if isinstance(output, dict) else None
    if prefix is None or not isinstance(key, str) or not key.startswith(prefix) or not is_safe_key(key):
        return None
    return key


def presign_outputs(
    result: dict[str, Any] | None,
    *,
    storage: TenantStorage,
    job_id: int,
    claim_token: UUID | None,
) -> dict[str, Any] | None:
    """A copy of a stored result whose outputs under the completing claim's prefix carry fresh
    presigned GET URLs. Any other key (there should be none) is shown without a URL, whatever
    URL fields its stored entry has."""
    if not isinstance(result, dict) or not isinstance(result.get(OUTPUTS), list):
        return result
    prefix = claim_prefix(storage.tenant_id, job_id, claim_token) if claim_token is not None else None
    presented = []
    for output in result[OUTPUTS]:
        key = completing_key(output, prefix)
        if isinstance(output, dict) and key is not None:
            url, expires_at = storage.presign_get(key)
            output = {**output, "url": url, "expiresAt": expires_at.isoformat().replace("+00:00", "Z")}
        elif isinstance(output, dict):
            output = {name: value for name, value in output.items() if name not in PRESENTED}
        presented.append(output)
    return {**result, OUTPUTS: presented}
