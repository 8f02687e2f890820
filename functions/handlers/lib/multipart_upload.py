"""Stream bytes of unknown total size into one S3 object with bounded memory.

Bytes collect in a buffer; each time it reaches `part_bytes` it goes up as one part of a
multipart upload while the next part fills. At most `max_in_flight` parts upload at once, so an
upload holds about `max_in_flight + 1` parts in memory whatever the object's size. An object
smaller than one part is sent with a single PUT and no multipart upload is ever created.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Final, TypeVar

from shared.errors import PermanentJobError

MiB: Final = 1024 * 1024
MIN_PART_BYTES: Final = 5 * MiB  # S3's minimum for every part except the last
DEFAULT_PART_BYTES: Final = 8 * MiB
MAX_IN_FLIGHT: Final = 2  # parts uploading while the next fills
MAX_PARTS: Final = 10_000  # S3's limit on parts per upload

T = TypeVar("T")


async def run_in_thread(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` in a worker thread. If the caller is cancelled meanwhile, waits for the thread
    to finish before re-raising, so cleanup code never runs alongside it."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class MultipartUpload:
    """One object being written; `write` as often as needed, then `complete` or `abort`."""

    def __init__(
        self,
        client: Any,
        *,
        bucket: str,
        key: str,
        content_type: str,
        content_disposition: str | None = None,
        part_bytes: int = DEFAULT_PART_BYTES,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum part size)")
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_bytes = part_bytes
        self._object_args: dict[str, str] = {"ContentType": content_type}
        if content_disposition:
            self._object_args["ContentDisposition"] = content_disposition
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self.max_in_flight = max_in_flight
        self._in_flight: deque[asyncio.Task[dict[str, Any]]] = deque()
        self._parts_sent = 0
        self._size = 0
        self._finished = False
        self._stored = False  # the object exists (its PUT or completion went through)

    @property
    def parts(self) -> int:
        """How many parts were sent (0 when the object went up in a single PUT)."""
        return self._parts_sent

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes to the object, sending a part whenever a full one is buffered.

        Raises PermanentJobError (kind "too-large") past S3's part limit, or whatever the store
        answered to the previous part.
        """
        if self._finished:
            raise RuntimeError("write after complete or abort")
        self._buffer += data
        if len(self._buffer) >= self.part_bytes:
            await self._send_part()

    async def complete(self) -> int:
        """Send what is left and finish the object; returns its size in bytes."""
        if self._finished:
            raise RuntimeError("complete after complete or abort")
        if self._upload_id is None and not self._in_flight:
            body, self._buffer = self._buffer, bytearray()  # handed over, never mutated again
            await run_in_thread(self._put_object, body)
            self._size = len(body)
        else:
            if self._buffer:
                await self._send_part()
            while self._in_flight:
                await self._wait_oldest()
            await run_in_thread(self._complete_upload)
        self._finished = True
        return self._size

    async def abort(self) -> None:
        """Drop everything sent so far, and the object itself if a cancellation came after it was
        stored (idempotent; errors from the store are not raised)."""
        self._finished = True
        self._buffer = bytearray()
        # A part still uploading could land after the abort and linger; let them end first.
        tasks, self._in_flight = list(self._in_flight), deque()
        if tasks:
            await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved on purpose: the abort supersedes a failed part
        from botocore.exceptions import BotoCoreError, ClientError  # loaded with the client, not before

        try:
            if self._stored:
                # Cancelled while the last request was already through: withdraw the object.
                self._stored = False
                await run_in_thread(self._delete_object)
            elif self._upload_id is not None:
                upload_id, self._upload_id = self._upload_id, None
                await run_in_thread(self._abort_upload, upload_id)
        except (BotoCoreError, ClientError):
            # Stores expire incomplete uploads (a bucket lifecycle rule); nothing else to do.
            pass

    async def _send_part(self) -> None:
        body, self._buffer = self._buffer, bytearray()  # handed over (no copy), never mutated again
        while len(self._in_flight) >= self.max_in_flight:
            await self._wait_oldest()
        number = self._parts_sent + 1
        if number > MAX_PARTS:
            raise PermanentJobError(
                f"export is larger than {MAX_PARTS} parts of {self.part_bytes} bytes", kind="too-large"
            )
        if self._upload_id is None:
            # The thread records the id itself, so `abort` knows it even if we are cancelled here.
            await run_in_thread(self._create_upload)
        self._parts_sent = number
        self._size += len(body)
        self._in_flight.append(asyncio.ensure_future(asyncio.to_thread(self._upload_part, number, body)))

    async def _wait_oldest(self) -> None:
        # Shielded: if we are cancelled here the part keeps going and `abort` waits for it.
        part = await asyncio.shield(self._in_flight[0])
        self._in_flight.popleft()
        self._parts.append(part)

    # --- blocking boto3 calls, run in worker threads -----------------------------------------

    def _put_object(self, body: bytearray) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.key, Body=body, **self._object_args)
        self._stored = True

    def _create_upload(self) -> None:
        created = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key, **self._object_args)
        self._upload_id = str(created["UploadId"])

    def _upload_part(self, number: int, body: bytearray) -> dict[str, Any]:
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def _complete_upload(self) -> None:
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )
        self._stored = True

    def _delete_object(self) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key)

    def _abort_upload(self, upload_id: str) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
