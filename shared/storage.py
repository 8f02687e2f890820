"""Object storage on Tigris or any S3-compatible store (boto3), with tenant-prefixed keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import IO, Any

import boto3
from botocore.config import Config

from shared.errors import PermanentJobError
from shared.settings import Settings


def output_key(tenant_id: str, job_id: int, name: str) -> str:
    """Where a job's output named `name` is stored."""
    return f"tenants/{tenant_id}/jobs/{job_id}/{name}"


def tenant_prefix(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/"


def check_tenant_key(tenant_id: str, key: str) -> str:
    """Return `key` if it lies inside the tenant's prefix; raise PermanentJobError otherwise."""
    if not key.startswith(tenant_prefix(tenant_id)) or ".." in key.split("/") or "//" in key:
        raise PermanentJobError(f"key {key!r} is outside this tenant's storage", kind="forbidden-key")
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
                s3={"addressing_style": "virtual" if _is_tigris(settings.aws_endpoint_url_s3) else "path"},
                # S3-compatible stores reject the newer default CRC checksums on some operations.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def ensure_bucket(self) -> None:
        """Create the bucket when missing (development and tests)."""
        existing = {b["Name"] for b in self.client.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str) -> int:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        return len(data)

    def put_file(self, key: str, fileobj: IO[bytes], content_type: str) -> int:
        """Stream a file-like object up (multipart above 8 MiB); returns its size."""
        self.client.upload_fileobj(fileobj, self.bucket, key, ExtraArgs={"ContentType": content_type})
        head = self.client.head_object(Bucket=self.bucket, Key=key)
        return int(head["ContentLength"])

    def get_bytes(self, key: str, *, max_bytes: int | None = None) -> bytes:
        obj = self.client.get_object(Bucket=self.bucket, Key=key)
        if max_bytes is not None and int(obj["ContentLength"]) > max_bytes:
            raise PermanentJobError(f"object {key!r} is larger than {max_bytes} bytes", kind="too-large")
        return bytes(obj["Body"].read())

    def presign_get(self, key: str) -> tuple[str, datetime]:
        url = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_ttl_seconds
        )
        return str(url), datetime.now(UTC) + timedelta(seconds=self.presign_ttl_seconds)

    def presign_put(self, key: str, content_type: str) -> tuple[str, datetime]:
        url = self.client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
            ExpiresIn=self.presign_ttl_seconds,
        )
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


def _is_tigris(endpoint: str | None) -> bool:
    return bool(endpoint and "tigris.dev" in endpoint)
