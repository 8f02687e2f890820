"""shared/storage.py against the moto S3 server: transfers, caps, presigned URLs, tenant keys.

Every key operation goes through a tenant's view (`Storage.for_tenant`), which refuses keys of
other tenants for reads, writes, presigns and deletes alike."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from infra.local.s3 import LocalS3
from shared.errors import PermanentJobError
from shared.keys import check_tenant_key, claim_prefix, job_prefix, tenant_prefix
from shared.storage import MiB, Storage, TenantStorage
from tests.conftest import make_settings


@pytest.fixture
def bucket(s3: LocalS3) -> Iterator[Storage]:
    store = Storage(make_settings("postgresql://unused.invalid/none", s3, presign_ttl_seconds=600))
    store.ensure_bucket()
    yield store


@pytest.fixture
def storage(bucket: Storage) -> TenantStorage:
    return bucket.for_tenant("t1")


def output_key(tenant: str, job_id: int, name: str) -> str:
    return f"{job_prefix(tenant, job_id)}0123/{name}"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


def test_ensure_bucket_creates_once_and_then_leaves_it(bucket: Storage, storage: TenantStorage) -> None:
    storage.put_bytes("tenants/t1/kept.txt", b"kept", "text/plain")

    bucket.ensure_bucket()

    assert storage.get_bytes("tenants/t1/kept.txt") == b"kept"


def test_bytes_round_trip_keeps_content_type(storage: TenantStorage, bucket: Storage) -> None:
    key = output_key("t1", 7, "hello.txt")

    assert storage.put_bytes(key, b"hello", "text/plain") == 5

    assert storage.get_bytes(key) == b"hello"
    assert bucket.client.head_object(Bucket=bucket.bucket, Key=key)["ContentType"] == "text/plain"


def test_large_file_goes_up_in_parts_and_comes_back_whole(storage: TenantStorage, bucket: Storage) -> None:
    data = os.urandom(17 * MiB + 123)  # three 8 MiB parts, the last one short
    key = "tenants/t1/uploads/big.bin"

    size = storage.put_file(key, io.BytesIO(data), "application/octet-stream")

    assert size == len(data)
    etag = bucket.client.head_object(Bucket=bucket.bucket, Key=key)["ETag"].strip('"')
    assert etag.endswith("-3"), f"expected a 3-part multipart ETag, got {etag}"
    sink = io.BytesIO()
    assert storage.download_to(key, sink, max_bytes=len(data)) == len(data)
    assert hashlib.sha256(sink.getvalue()).digest() == hashlib.sha256(data).digest()


def test_small_file_counts_its_size(storage: TenantStorage) -> None:
    assert storage.put_file("tenants/t1/uploads/small.bin", io.BytesIO(b"x" * 1000), "application/octet-stream") == 1000


def test_objects_over_the_cap_are_refused(storage: TenantStorage) -> None:
    key = "tenants/t1/uploads/capped.bin"
    storage.put_bytes(key, b"y" * 5000, "application/octet-stream")

    with pytest.raises(PermanentJobError) as whole:
        storage.get_bytes(key, max_bytes=4999)
    sink = io.BytesIO()
    with pytest.raises(PermanentJobError) as streamed:
        storage.download_to(key, sink, max_bytes=1000)

    assert whole.value.kind == streamed.value.kind == "too-large"
    assert sink.tell() == 0, "the size reported by the store is checked before any body byte is read"
    assert storage.get_bytes(key, max_bytes=5000) == b"y" * 5000


def test_stream_reads_in_pieces(storage: TenantStorage) -> None:
    key = "tenants/t1/uploads/stream.bin"
    storage.put_bytes(key, b"0123456789", "application/octet-stream")

    with storage.get_stream(key, max_bytes=10) as body:
        pieces = [body.read(4), body.read(4), body.read(4), body.read(4)]

    assert pieces == [b"0123", b"4567", b"89", b""]


def test_stream_works_as_a_buffered_file(storage: TenantStorage) -> None:
    key = "tenants/t1/uploads/buffered.bin"
    storage.put_bytes(key, b"line one\nline two\n", "text/plain")

    with storage.get_stream(key, max_bytes=100) as body:
        lines = io.BufferedReader(body).readlines()

    assert lines == [b"line one\n", b"line two\n"]


def test_missing_object_is_a_permanent_error(storage: TenantStorage) -> None:
    with pytest.raises(PermanentJobError) as caught:
        storage.get_bytes("tenants/t1/uploads/nothing-here")

    assert caught.value.kind == "object-not-found"


def test_presigned_get_serves_the_bytes(storage: TenantStorage, http: httpx.Client, bucket: Storage) -> None:
    key = output_key("t1", 9, "thumb.webp")
    storage.put_bytes(key, b"RIFF-not-really-webp", "image/webp")

    url, expires_at = storage.presign_get(key)
    answer = http.get(url)

    assert answer.status_code == 200
    assert answer.content == b"RIFF-not-really-webp"
    assert answer.headers["content-type"] == "image/webp"
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["600"]
    assert expires_at.tzinfo is not None


def test_presigned_put_is_accepted_and_signs_type_and_length(
    storage: TenantStorage, http: httpx.Client, bucket: Storage
) -> None:
    key = "tenants/t1/uploads/abc/photo.jpg"
    body = b"\xff\xd8\xff" + b"j" * 997

    url, _ = storage.presign_put(key, "image/jpeg", size=len(body))
    answer = http.put(url, content=body, headers={"Content-Type": "image/jpeg"})

    assert answer.status_code == 200, answer.text
    assert storage.get_bytes(key) == body
    assert bucket.client.head_object(Bucket=bucket.bucket, Key=key)["ContentType"] == "image/jpeg"
    signed = parse_qs(urlsplit(url).query)["X-Amz-SignedHeaders"][0].split(";")
    assert {"content-type", "content-length", "host"} <= set(signed)


def test_keys_have_the_documented_shape() -> None:
    assert tenant_prefix("acme") == "tenants/acme/"
    assert job_prefix("acme", 42) == "tenants/acme/jobs/42/"
    token = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert claim_prefix("acme", 42, token) == "tenants/acme/jobs/42/12345678123456781234567812345678/"


@pytest.mark.parametrize(
    "operation",
    [
        lambda s, k: s.put_bytes(k, b"x", "text/plain"),
        lambda s, k: s.put_file(k, io.BytesIO(b"x"), "text/plain"),
        lambda s, k: s.get_bytes(k),
        lambda s, k: s.get_stream(k).__enter__(),
        lambda s, k: s.download_to(k, io.BytesIO()),
        lambda s, k: s.presign_get(k),
        lambda s, k: s.presign_put(k, "text/plain"),
        lambda s, k: s.delete(k),
        lambda s, k: s.client_for(k),
    ],
    ids=[
        "put_bytes",
        "put_file",
        "get_bytes",
        "get_stream",
        "download_to",
        "presign_get",
        "presign_put",
        "delete",
        "client_for",
    ],
)
def test_every_operation_refuses_another_tenants_key(bucket: Storage, operation: Any) -> None:
    """Defence in depth: whatever key a caller was handed, the tenant's view cannot touch t2's objects."""
    key = "tenants/t2/uploads/secret.txt"
    bucket.for_tenant("t2").put_bytes(key, b"t2's bytes", "text/plain")

    with pytest.raises(PermanentJobError) as caught:
        operation(bucket.for_tenant("t1"), key)

    assert caught.value.kind == "forbidden-key"
    assert bucket.for_tenant("t2").get_bytes(key) == b"t2's bytes", "nothing was overwritten or deleted"


@pytest.mark.parametrize(
    "key",
    [
        "tenants/t1/uploads/abc/photo.jpg",
        "tenants/t1/jobs/5/out.webp",
        "tenants/t1/uploads/%2e%2e/literal-percent-is-just-a-name",
        "tenants/t1/a..b/c...d",
    ],
)
def test_keys_inside_the_tenant_prefix_are_allowed(key: str) -> None:
    assert check_tenant_key("t1", key) == key


@pytest.mark.parametrize(
    "key",
    [
        "tenants/t2/uploads/abc/photo.jpg",
        "tenants/t1/../t2/uploads/photo.jpg",
        "tenants/t1/uploads/../../t2/photo.jpg",
        "tenants/t1/./uploads/photo.jpg",
        "tenants/t1//uploads/photo.jpg",
        "tenants/t1/uploads/photo.jpg/",
        "tenants/t1/uploads\\..\\..\\t2\\photo.jpg",
        "tenants/t1/uploads/pho\x00to.jpg",
        "tenants/t1/uploads/photo\n.jpg",
        "tenants/t1/uploads/photo.jpg\n",  # `$` alone would match before a final newline
        "/tenants/t1/uploads/photo.jpg",
        "tenants/t10/uploads/photo.jpg",
        "tenants/t1",
        "tenants/t1/",
        "",
    ],
)
def test_keys_outside_the_tenant_prefix_are_refused(key: str) -> None:
    with pytest.raises(PermanentJobError) as caught:
        check_tenant_key("t1", key)

    assert caught.value.kind == "forbidden-key"


@pytest.mark.parametrize("tenant", ["..", ".", "", "t1/../t2"])
def test_a_tenant_id_that_is_a_path_trick_owns_nothing(tenant: str) -> None:
    with pytest.raises(PermanentJobError):
        check_tenant_key(tenant, f"tenants/{tenant}/uploads/x")


@pytest.mark.parametrize(
    ("endpoint", "bucket", "source"),
    [
        ("https://t3.storage.dev", "content", "https://content.t3.storage.dev"),
        ("https://fly.storage.tigris.dev", "content", "https://content.fly.storage.tigris.dev"),
        ("http://127.0.0.1:9000", "content", "http://127.0.0.1:9000/content/"),
        ("https://minio.example.com", "my.bucket", "https://minio.example.com/my.bucket/"),
        ("https://storage.dev.example.com", "b", "https://storage.dev.example.com/b/"),  # not Tigris
        # A dotted bucket stays in the path even on Tigris (review: the CSP named a host never used).
        ("https://t3.storage.dev", "media.example.com", "https://t3.storage.dev/media.example.com/"),
        ("https://fly.storage.tigris.dev", "media.example.com", "https://fly.storage.tigris.dev/media.example.com/"),
        (None, "content", "https://s3.eu-west-1.amazonaws.com/content/"),  # AWS: path style
    ],
)
def test_presigned_urls_lie_under_the_source_a_page_names(endpoint: str | None, bucket: str, source: str) -> None:
    # Tigris' endpoint is https://t3.storage.dev (was fly.storage.tigris.dev), and its buckets made
    # since February 2025 are served only as virtual hosts: only "tigris.dev" got them
    # (adversarial review). A page's CSP names the source; without credentials too.
    settings = make_settings(
        "postgresql://unused",
        bucket_name=bucket,
        aws_endpoint_url_s3=endpoint,
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="example",
        aws_region="eu-west-1" if endpoint is None else "auto",
    )
    storage = Storage(settings)
    assert storage.download_source() == source
    url, _ = storage.for_tenant("t").presign_get("tenants/t/a.png")
    assert url.startswith(source if source.endswith("/") else source + "/")
    unsigned = Storage(settings.model_copy(update={"aws_access_key_id": None, "aws_secret_access_key": None}))
    assert unsigned.download_source() == source
