"""The archives function: bundle objects of the tenant (uploads, other jobs' outputs) into one ZIP.

`POST /jobs/archives` with `entries`: each either `{"key": "tenants/{tenant}/..."}` (one object)
or `{"jobId": n}` (every output of one of the tenant's completed jobs), optionally with `path`,
the name inside the ZIP. The archive is written while it streams: each object is read in 1 MiB
pieces and deflated into parts of a multipart upload that go up as they fill (a ZIP written to an
unseekable stream carries data descriptors), so memory stays near one part whatever the sizes.
Limits: 1,000 entries, 1 GiB per object, 4 GiB in all (ZIP64 past 4 GiB per entry or 65,535
entries is handled by the zipfile module). Result: the ZIP as the output `filename`, with
`entries` and `bytes` (stored objects' total).

Everything about the function is declared here (FUNCTION); it is the sixth function added as one
module and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import zipfile
from dataclasses import dataclass
from typing import IO, Annotated, Any, Final, Self, cast

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from functions.handlers.base import HandlerContext, HandlerResult, parse_args
from shared.db import job_store
from shared.db.models import Job, JobState
from shared.errors import PermanentJobError
from shared.functions import FunctionSpec
from shared.keys import check_tenant_key, claim_prefix, is_safe_key
from shared.schemas.common import CamelModel, JobRequest

MiB: Final = 1024 * 1024
MAX_ENTRIES: Final = 1_000
MAX_OBJECT_BYTES: Final = 1024 * MiB
MAX_TOTAL_BYTES: Final = 4096 * MiB
READ_BYTES: Final = 1 * MiB
PART_BYTES: Final = 8 * MiB  # S3 parts: at least 5 MiB except the last


def _safe_path(value: str) -> str:
    """A relative path inside the ZIP: no absolute path, no `..`, no backslash or control char."""
    if value.startswith("/") or not is_safe_key(value):
        raise ValueError("must be a relative path without '.', '..', '//', backslashes or control characters")
    return value


def _storage_key(value: str) -> str:
    if not value.startswith("tenants/") or not is_safe_key(value):
        raise ValueError("must be a storage key of the form tenants/{tenant}/... without '.', '..' or '//'")
    return value


class ArchiveEntry(CamelModel):
    """One object (`key`), or every output of a completed job (`jobId`)."""

    key: Annotated[str, Field(min_length=1, max_length=1024), AfterValidator(_storage_key)] | None = None
    job_id: int | None = Field(None, ge=1, le=2**63 - 1)
    path: Annotated[str, Field(min_length=1, max_length=255), AfterValidator(_safe_path)] | None = Field(
        None, description="name inside the ZIP (default: the object's file name); for a job: a folder"
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.key is None) == (self.job_id is None):
            raise ValueError("give exactly one of key or jobId")
        return self


class ArchivesRequest(JobRequest):
    """Bundle objects of the tenant into one ZIP."""

    entries: list[ArchiveEntry] = Field(..., min_length=1, max_length=MAX_ENTRIES)
    filename: str = Field("archive.zip", max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*\.zip$")

    @field_validator("entries")
    @classmethod
    def _keys_of_the_tenant(cls, entries: list[ArchiveEntry], info: ValidationInfo) -> list[ArchiveEntry]:
        # When the tenant is known (the ingress passes the caller's), another tenant's key is a 422.
        tenant = info.data.get("tenant_id") or (info.context or {}).get("tenant_id")
        if tenant:
            for n, entry in enumerate(entries):
                if entry.key is not None and not entry.key.startswith(f"tenants/{tenant}/"):
                    raise ValueError(f"entries.{n}.key is not one of this tenant's objects")
        return entries


FUNCTION: Final = FunctionSpec(
    queue="archives",
    worker="BuildArchive",
    summary="Bundle objects of the tenant (uploads, jobs' outputs) into one ZIP",
    request=ArchivesRequest,
    limit=3,
    timeout_seconds=900,
    max_attempts=3,
)


@dataclass(frozen=True, slots=True)
class _Member:
    key: str
    path: str


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Build the archive. Raises PermanentJobError: "invalid-args", "forbidden-key",
    "object-not-found", "job-not-found", "job-not-completed", "too-large", "archive-too-large"."""
    request = parse_args(ArchivesRequest, job.args)
    members = await _members(request, job.tenant_id, ctx)
    key = ctx.outputs.key_for(request.filename)
    storage, cancelled = ctx.storage, ctx.cancelled
    client = storage.client_for(key)
    sizes = await asyncio.to_thread(_write_zip, members, storage, client, key, cancelled)
    ctx.outputs.record(name=request.filename, key=key, content_type="application/zip", size=sizes.archive)
    return {"entries": len(members), "bytes": sizes.stored}


async def warm(ctx: HandlerContext) -> None:
    """Build the storage client before the first job, in a thread: boto3 takes a while to load and
    would otherwise block the machine's event loop (and its heartbeats) on the first job."""
    await asyncio.to_thread(lambda: ctx.bucket)


async def _members(request: ArchivesRequest, tenant_id: str, ctx: HandlerContext) -> list[_Member]:
    """What goes into the ZIP, each with a unique path (a repeated name gets " (2)", " (3)"...)."""
    wanted: list[tuple[str, str]] = []
    for entry in request.entries:
        if entry.key is not None:
            key = check_tenant_key(tenant_id, entry.key)
            wanted.append((key, entry.path or posixpath.basename(key)))
            continue
        assert entry.job_id is not None  # one of the two, by validation
        for key in await _job_outputs(entry.job_id, tenant_id, ctx):
            name = posixpath.basename(key)
            wanted.append((key, posixpath.join(entry.path, name) if entry.path else f"job-{entry.job_id}/{name}"))
    taken: set[str] = set()
    members = []
    for key, path in wanted:
        unique, n = path, 1
        while unique in taken:
            n += 1
            stem, ext = posixpath.splitext(path)
            unique = f"{stem} ({n}){ext}"
        taken.add(unique)
        members.append(_Member(key=key, path=unique))
    return members


async def _job_outputs(job_id: int, tenant_id: str, ctx: HandlerContext) -> list[str]:
    """The output keys of a completed job of the tenant (another tenant's job is "not found")."""
    if ctx.pool is None:
        raise RuntimeError("archives of job outputs read the job through the context's pool")
    async with ctx.pool.connection() as conn:
        source = await job_store.get_job(conn, job_id, tenant_id=tenant_id)
    if source is None:
        raise PermanentJobError(f"job {job_id} does not exist", kind="job-not-found")
    if source.state != JobState.COMPLETED or source.claim_token is None:
        raise PermanentJobError(f"job {job_id} is {source.state.value}, not completed", kind="job-not-completed")
    prefix = claim_prefix(tenant_id, source.id, source.claim_token)
    outputs = (source.result or {}).get("outputs") or []
    return [o["key"] for o in outputs if isinstance(o, dict) and str(o.get("key", "")).startswith(prefix)]


@dataclass(slots=True)
class _Sizes:
    stored: int = 0  # bytes of the objects read
    archive: int = 0  # bytes of the ZIP


def _write_zip(members: list[_Member], storage: Any, client: Any, key: str, cancelled: asyncio.Event) -> _Sizes:
    """In a worker thread: stream every member into the ZIP, the ZIP into the upload."""
    sizes = _Sizes()
    upload = _PartWriter(client, bucket=storage.bucket, key=key)
    try:
        with zipfile.ZipFile(
            cast(IO[bytes], upload), mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=6
        ) as archive:
            for member in members:
                with storage.get_stream(member.key, max_bytes=MAX_OBJECT_BYTES) as body:
                    info = zipfile.ZipInfo(member.path)
                    info.compress_type = zipfile.ZIP_DEFLATED
                    with archive.open(info, mode="w", force_zip64=True) as target:
                        while chunk := body.read(READ_BYTES):
                            if cancelled.is_set():
                                raise asyncio.CancelledError("archive cancelled")
                            sizes.stored += len(chunk)
                            if sizes.stored > MAX_TOTAL_BYTES:
                                raise PermanentJobError(
                                    f"the objects exceed {MAX_TOTAL_BYTES} bytes in all", kind="archive-too-large"
                                )
                            target.write(chunk)
        sizes.archive = upload.finish()
    except BaseException:
        upload.abort()
        raise
    return sizes


class _PartWriter:
    """A write-only, unseekable file that sends itself to S3 in parts as it fills (one part in
    memory); an archive smaller than one part goes up in a single PUT."""

    def __init__(self, client: Any, *, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        self._size += len(data)
        while len(self._buffer) >= PART_BYTES:
            with memoryview(self._buffer) as view:
                part = bytes(view[:PART_BYTES])  # the one copy: the buffer shrinks before the next write
            del self._buffer[:PART_BYTES]
            self._send(part)
        return len(data)

    def _send(self, body: bytes) -> None:
        if self._upload_id is None:
            created = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self._key, ContentType="application/zip"
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        self._parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def finish(self) -> int:
        if self._upload_id is None:
            self._client.put_object(
                Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer), ContentType="application/zip"
            )
        else:
            if self._buffer:
                self._send(bytes(self._buffer))
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        self._buffer.clear()
        return self._size

    def abort(self) -> None:
        if self._upload_id is not None:
            # On failure a bucket lifecycle rule expires what is left.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)
