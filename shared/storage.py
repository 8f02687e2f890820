"""Object storage on Tigris or any S3-compatible store (boto3), with tenant-prefixed keys.

`Storage` is the bucket; every operation on a key goes through `Storage.for_tenant(tenant)`, a
`TenantStorage` that refuses (PermanentJobError kind "forbidden-key") any key outside that
tenant's prefix, for reads, writes, presigns and deletes alike. So whatever a caller was handed
(an upload key in a request, an output key in a stored result), one tenant's code path cannot
touch another tenant's objects.

Every method is blocking (boto3); async callers run them with `asyncio.to_thread`. The boto3
client is thread-safe, so one `Storage` serves every thread of a machine.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.errors import PermanentJobError, ServiceUnavailable
from shared.keys import check_tenant_key
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

_NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})


class Storage:
    """A bucket on an S3-compatible endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.bucket_name
        self.presign_ttl_seconds = settings.presign_ttl_seconds
        self.virtual_host = _is_tigris(settings.aws_endpoint_url_s3)
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
                s3={"addressing_style": "virtual" if self.virtual_host else "path"},
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

    def for_tenant(self, tenant_id: str) -> TenantStorage:
        """The operations on `tenant_id`'s keys (and only those)."""
        return TenantStorage(self, tenant_id)

    @functools.cached_property
    def _unsigned_url(self) -> str:
        # Addressed exactly as the real URLs are (botocore keeps a dotted bucket in the path even
        # where virtual hosts are asked for), and made without credentials or a request.
        unsigned = boto3.client(
            "s3",
            endpoint_url=self.client.meta.endpoint_url,
            region_name=self.client.meta.region_name,
            config=Config(
                signature_version=UNSIGNED, s3={"addressing_style": "virtual" if self.virtual_host else "path"}
            ),
        )
        return str(unsigned.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "k"}))

    def download_source(self) -> str:
        """Where presign_get's URLs point, as a Content-Security-Policy source: the bucket's
        virtual host, or (path style) the bucket's path on the endpoint's host, never the whole
        host, which other buckets share."""
        parts = urlsplit(self._unsigned_url)
        directory = parts.path.rsplit("/", 1)[0] + "/"  # "/" on a virtual host, "/bucket/" in the path
        return f"{parts.scheme}://{parts.netloc}" + ("" if directory == "/" else directory)


class TenantStorage:
    """One tenant's view of the bucket: every key is checked against the tenant's prefix."""

    def __init__(self, storage: Storage, tenant_id: str) -> None:
        self._storage = storage
        self.tenant_id = tenant_id
        self._client: Any = storage.client
        self.bucket = storage.bucket
        self.presign_ttl_seconds = storage.presign_ttl_seconds

    def check(self, key: str) -> str:
        """`key` if it lies inside this tenant's prefix; raises PermanentJobError "forbidden-key"."""
        return check_tenant_key(self.tenant_id, key)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        """Store `data` under `key` in one request; returns its size."""
        key = self.check(key)
        self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return len(data)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str) -> int:
        """Stream a file-like object up (multipart above 8 MiB, bounded buffers); returns its size."""
        key = self.check(key)
        sent = _ByteCounter()
        self._client.upload_fileobj(
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
        key = self.check(key)
        try:
            obj = self._client.get_object(Bucket=self.bucket, Key=key)
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

    def presign_get(
        self, key: str, *, content_type: str | None = None, disposition: str | None = None
    ) -> tuple[str, datetime]:
        """A GET URL for `key` valid for PRESIGN_TTL_SECONDS, and when it expires (no request made).
        `content_type` and `disposition` override what the store answers with (signed)."""
        key = self.check(key)
        params = {"Bucket": self.bucket, "Key": key}
        if content_type is not None:
            params["ResponseContentType"] = content_type
        if disposition is not None:
            params["ResponseContentDisposition"] = disposition
        url = _signed(self._client, "get_object", params, self.presign_ttl_seconds)
        return str(url), datetime.now(UTC) + timedelta(seconds=self.presign_ttl_seconds)

    def presign_put(self, key: str, content_type: str, *, size: int | None = None) -> tuple[str, datetime]:
        """A PUT URL for `key` and when it expires.

        The signature covers Content-Type, and Content-Length when `size` is given, so the
        client must send exactly those (stores that check signed headers refuse anything else).
        """
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.check(key), "ContentType": content_type}
        if size is not None:
            params["ContentLength"] = size
        url = _signed(self._client, "put_object", params, self.presign_ttl_seconds)
        return str(url), datetime.now(UTC) + timedelta(seconds=self.presign_ttl_seconds)

    def delete(self, key: str) -> None:
        """Delete the object at `key` (nothing happens when there is none)."""
        self._client.delete_object(Bucket=self.bucket, Key=self.check(key))

    def client_for(self, key: str) -> Any:
        """The boto3 client, for a streaming writer of `key` (checked here, once, up front)."""
        self.check(key)
        return self._client


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


def _signed(client: Any, operation: str, params: dict[str, Any], expires_in: int) -> str:
    """A presigned URL; a storage that cannot sign (no or partial credentials) is a 503 to the
    caller, never an unhandled error."""
    try:
        return str(client.generate_presigned_url(operation, Params=params, ExpiresIn=expires_in))
    except BotoCoreError as exc:
        raise ServiceUnavailable(
            f"the storage cannot sign a URL now ({type(exc).__name__})", headers={"Retry-After": "30"}
        ) from exc


def _is_tigris(endpoint: str | None) -> bool:
    """Tigris (https://t3.storage.dev, https://fly.storage.tigris.dev) serves buckets created
    since February 2025 only as virtual hosts."""
    host = (urlsplit(endpoint).hostname or "") if endpoint else ""
    return any(host == domain or host.endswith("." + domain) for domain in ("storage.dev", "tigris.dev"))
