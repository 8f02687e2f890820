"""Object storage on Tigris or any S3-compatible store (boto3), with tenant-prefixed keys.

Every method is blocking (boto3); async callers run them with `asyncio.to_thread`. The boto3
client is thread-safe, so one `Storage` serves every thread of a machine.
"""

from __future__ import annotations

import io
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from shared.errors import PermanentJobError
from shared.settings import Settings

MiB: Final = 1024 * 1024

# Multipart above 8 MiB in 8 MiB parts, at most 4 in flight: an upload holds about
# max_concurrency x chunksize (32 MiB) of buffers whatever the object's size.
TRANSFER_CONFIG: Final = TransferConfig(
    multipart_threshold=8 * MiB,
    multipart_chunksize=8 * MiB,
    max_concurrency=4,
    max_io_queue=16,
    use_threads=True,
)
_READ_CHUNK_BYTES: Final = 1 * MiB

# A key segment is plain printable text; no control characters, no backslashes (some stores and
# tools treat them as separators), and never "", "." or ".." (path tricks).
_KEY_SEGMENT = re.compile(r"^[^\x00-\x1f\x7f\\]+$")
_NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})


def tenant_prefix(tenant_id: str) -> str:
    """The prefix every object of `tenant_id` lives under."""
    return f"tenants/{tenant_id}/"


def output_key(tenant_id: str, job_id: int, name: str) -> str:
    """Where a job's output named `name` is stored."""
    return f"{tenant_prefix(tenant_id)}jobs/{job_id}/{name}"


def upload_key(tenant_id: str, filename: str) -> str:
    """A fresh key for an upload: `tenants/{tenant}/uploads/{uuid}/{filename}`.

    The random segment keeps two uploads of one filename apart and makes keys unguessable.
    """
    return f"{tenant_prefix(tenant_id)}uploads/{uuid.uuid4().hex}/{filename}"


def is_safe_key(key: str) -> bool:
    """True if every `/`-separated segment of `key` is a plain name (no empty, `.` or `..`)."""
    return all(segment not in ("", ".", "..") and _KEY_SEGMENT.match(segment) for segment in key.split("/"))


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


class Storage:
    """A bucket on an S3-compatible endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.bucket_name
        self.presign_ttl_seconds = settings.presign_ttl_seconds
        secret = settings.aws_secret_access_key.get_secret_value() if settings.aws_secret_access_key else None
        self.client: Any = boto3.client(
            "s3",
            endpoint_url=settings.aws_endpoint_url_s3,
            aws_access_key_id=settings.aws_access_key_id,
            aws_secret_access_key=secret,
            region_name=settings.aws_region,
            config=Config(
                signature_version="s3v4",
                # Tigris serves buckets as virtual hosts; local and other S3-compatible servers
                # (moto, MinIO) expect the bucket in the path.
                s3={"addressing_style": "virtual" if _is_tigris(settings.aws_endpoint_url_s3) else "path"},
                # S3-compatible stores reject the newer default CRC checksums on some operations.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                max_pool_connections=TRANSFER_CONFIG.max_request_concurrency + 4,
            ),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (development and tests). Raises botocore's ClientError
        when the bucket exists but these credentials may not use it."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) not in _NOT_FOUND_CODES | {"NoSuchBucket"}:
                raise
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        """Store `data` under `key` in one request; returns its size."""
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return len(data)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str) -> int:
        """Stream a file-like object up (multipart above 8 MiB, bounded buffers); returns its size."""
        sent = _ByteCounter()
        self.client.upload_fileobj(
            fileobj,
            self.bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=TRANSFER_CONFIG,
            Callback=sent,
        )
        return sent.total

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes.

        Raises PermanentJobError kind "object-not-found" when it does not exist and kind
        "too-large" when it is larger than `max_bytes` (checked before reading the body).
        """
        with self.get_stream(key, max_bytes=max_bytes) as body:
            return body.read()

    @contextmanager
    def get_stream(self, key: str, *, max_bytes: int | None = None) -> Iterator[ObjectReader]:
        """The object's body as a readable stream that refuses to yield more than `max_bytes`.

        Raises PermanentJobError kind "object-not-found" or "too-large" (before any body byte
        is read when the store reports the size, otherwise as soon as the cap is passed).
        """
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            raise _translate(exc, key) from exc
        body = obj["Body"]
        try:
            if max_bytes is not None and int(obj.get("ContentLength", 0)) > max_bytes:
                raise PermanentJobError(f"object {key!r} is larger than {max_bytes} bytes", kind="too-large")
            yield ObjectReader(body, key=key, max_bytes=max_bytes)
        finally:
            body.close()

    def download_to(self, key: str, fileobj: IO[bytes], *, max_bytes: int | None = None) -> int:
        """Copy the object into `fileobj` in 1 MiB chunks; returns the byte count.

        Raises as `get_stream` does; on "too-large" `fileobj` holds at most `max_bytes` bytes.
        """
        written = 0
        with self.get_stream(key, max_bytes=max_bytes) as body:
            while chunk := body.read(_READ_CHUNK_BYTES):
                fileobj.write(chunk)
                written += len(chunk)
        return written

    def presign_get(self, key: str) -> tuple[str, datetime]:
        """A GET URL for `key` valid for PRESIGN_TTL_SECONDS, and when it expires (no request made)."""
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_ttl_seconds
        )
        return str(url), datetime.now(UTC) + timedelta(seconds=self.presign_ttl_seconds)

    def presign_put(self, key: str, content_type: str, *, size: int | None = None) -> tuple[str, datetime]:
        """A PUT URL for `key` and when it expires.

        The signature covers Content-Type, and Content-Length when `size` is given, so the
        client must send exactly those (stores that check signed headers refuse anything else).
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        if size is not None:
            params["ContentLength"] = size
        url = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=self.presign_ttl_seconds)
        return str(url), datetime.now(UTC) + timedelta(seconds=self.presign_ttl_seconds)

    def presign_result(self, result: dict[str, Any] | None) -> dict[str, Any] | None:
        """A copy of a job result whose outputs carry fresh presigned GET URLs."""
        if not result or not isinstance(result.get("outputs"), list):
            return result
        outputs = []
        for output in result["outputs"]:
            if isinstance(output, dict) and isinstance(output.get("key"), str):
                url, expires_at = self.presign_get(output["key"])
                output = {**output, "url": url, "expiresAt": expires_at.isoformat().replace("+00:00", "Z")}
            outputs.append(output)
        return {**result, "outputs": outputs}


class _ByteCounter:
    """boto3 transfer callback: sums the bytes sent (retries report negative amounts)."""

    def __init__(self) -> None:
        self.total = 0
        self._lock = threading.Lock()  # multipart parts report from several threads

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.total += amount


class ObjectReader(io.RawIOBase):
    """An object's body; raises PermanentJobError kind "too-large" once more than `max_bytes` came through."""

    def __init__(self, body: Any, *, key: str, max_bytes: int | None) -> None:
        self._body = body
        self._key = key
        self._max_bytes = max_bytes
        self._read = 0

    def read(self, n: int = -1, /) -> bytes:
        if self._max_bytes is not None:
            # Ask for one byte past the cap so an object that lied about its size is noticed.
            left = self._max_bytes + 1 - self._read
            n = left if n < 0 else min(n, left)
            if n <= 0:
                return b""
        chunk = bytes(self._body.read(n) if n >= 0 else self._body.read())
        self._read += len(chunk)
        if self._max_bytes is not None and self._read > self._max_bytes:
            raise PermanentJobError(f"object {self._key!r} is larger than {self._max_bytes} bytes", kind="too-large")
        return chunk

    def readinto(self, buffer: Any, /) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()
        super().close()


def _translate(exc: ClientError, key: str) -> Exception:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    if code in _NOT_FOUND_CODES:
        return PermanentJobError(f"object {key!r} does not exist", kind="object-not-found")
    return exc


def _is_tigris(endpoint: str | None) -> bool:
    return bool(endpoint and "tigris.dev" in endpoint)
