"""The streaming multipart upload, against the moto S3 server."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import pytest

from functions.handlers.lib.multipart_upload import MIN_PART_BYTES, MultipartUpload
from shared.settings import Settings
from shared.storage import Storage


@pytest.fixture
def storage(settings: Settings) -> Storage:
    store = Storage(settings)
    store.ensure_bucket()
    return store


def upload_to(storage: Storage, key: str, *, max_in_flight: int = 2) -> MultipartUpload:
    return MultipartUpload(
        storage.client,
        bucket=storage.bucket,
        key=key,
        content_type="text/csv",
        content_disposition='attachment; filename="x.csv"',
        part_bytes=MIN_PART_BYTES,
        max_in_flight=max_in_flight,
    )


def pending(storage: Storage) -> list[object]:
    return list(storage.client.list_multipart_uploads(Bucket=storage.bucket).get("Uploads", []))


async def test_a_small_object_goes_up_in_one_put(storage: Storage):
    upload = upload_to(storage, "t/small.csv")
    await upload.write(b"a,b\n")
    await upload.write(bytearray(b"1,2\n"))

    size = await upload.complete()

    assert size == 8 and upload.parts == 0
    assert storage.client.get_object(Bucket=storage.bucket, Key="t/small.csv")["Body"].read() == b"a,b\n1,2\n"
    head = storage.client.head_object(Bucket=storage.bucket, Key="t/small.csv")
    assert (head["ContentType"], head["ContentDisposition"]) == ("text/csv", 'attachment; filename="x.csv"')


@pytest.mark.parametrize("max_in_flight", [1, 2])
async def test_a_large_object_goes_up_in_parts_of_the_configured_size(storage: Storage, max_in_flight: int):
    data = os.urandom(2 * MIN_PART_BYTES + 12345)
    upload = upload_to(storage, "t/large.bin", max_in_flight=max_in_flight)
    for start in range(0, len(data), 256 * 1024):  # many writes per part
        await upload.write(memoryview(data)[start : start + 256 * 1024])

    size = await upload.complete()

    assert size == len(data) and upload.parts == 3
    assert storage.client.get_object(Bucket=storage.bucket, Key="t/large.bin")["Body"].read() == data
    etag = storage.client.head_object(Bucket=storage.bucket, Key="t/large.bin")["ETag"]
    assert etag.strip('"').endswith("-3")
    assert pending(storage) == []


async def test_no_more_than_max_in_flight_parts_upload_at_once(storage: Storage, monkeypatch: pytest.MonkeyPatch):
    upload_part = storage.client.upload_part
    lock = threading.Lock()
    running: list[int] = []
    peak = 0

    def slow_part(**kwargs: Any) -> Any:
        nonlocal peak
        with lock:
            running.append(kwargs["PartNumber"])
            peak = max(peak, len(running))
        try:
            time.sleep(0.2)  # long enough for the writer to hand over more parts if it could
            return upload_part(**kwargs)
        finally:
            with lock:
                running.remove(kwargs["PartNumber"])

    monkeypatch.setattr(storage.client, "upload_part", slow_part)
    upload = upload_to(storage, "t/bounded.bin", max_in_flight=2)
    for _ in range(6):
        await upload.write(os.urandom(MIN_PART_BYTES))

    await upload.complete()

    # The bound is the guarantee; how many overlap in fact depends on how busy the machine is.
    assert upload.parts == 6 and 1 <= peak <= 2


async def test_abort_drops_the_parts_sent(storage: Storage):
    upload = upload_to(storage, "t/dropped.bin")
    await upload.write(os.urandom(MIN_PART_BYTES + 1))
    await upload.write(os.urandom(MIN_PART_BYTES))  # waits for the first part: the upload exists
    assert len(pending(storage)) == 1

    await upload.abort()
    await upload.abort()  # idempotent

    assert pending(storage) == []
    assert storage.client.list_objects_v2(Bucket=storage.bucket, Prefix="t/dropped").get("KeyCount", 0) == 0
    with pytest.raises(RuntimeError):
        await upload.write(b"more")


async def test_parts_below_the_s3_minimum_are_refused(storage: Storage):
    with pytest.raises(ValueError, match="part_bytes"):
        MultipartUpload(storage.client, bucket=storage.bucket, key="k", content_type="x", part_bytes=MIN_PART_BYTES - 1)


@pytest.mark.parametrize("size", [100, 2 * MIN_PART_BYTES])
async def test_a_cancel_while_completing_leaves_nothing(storage: Storage, size: int):
    upload = upload_to(storage, "t/late.bin")
    await upload.write(os.urandom(size))
    completing = asyncio.create_task(upload.complete())
    await asyncio.sleep(0)  # a request is under way (the PUT of a small object); it cannot be called back
    completing.cancel()

    with pytest.raises(asyncio.CancelledError):
        await completing
    stored = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix="t/late").get("KeyCount", 0)
    if size < MIN_PART_BYTES:
        assert stored == 1  # the PUT went through before the cancel took effect
    await upload.abort()  # what the export does on any error

    assert storage.client.list_objects_v2(Bucket=storage.bucket, Prefix="t/late").get("KeyCount", 0) == 0
    assert pending(storage) == []
