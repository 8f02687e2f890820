"""Content-Encoding decoding in bounded steps, so a size cap can count decoded bytes.

httpx decodes each network chunk in one call: a 400-byte brotli body becomes 256 MiB before any
cap sees it. Here every step returns at most about PIECE_BYTES of output, and output is produced
only as the caller iterates, so a reader that stops at its cap never holds more than the cap plus
one piece:

- gzip and deflate: zlib's `decompress(data, max_length)` keeps what it did not consume in
  `unconsumed_tail` (https://docs.python.org/3/library/zlib.html#zlib.Decompress.decompress);
- br: `brotli.Decompressor.process(data, output_buffer_limit=...)` (Brotli >= 1.2.0, the fix
  for CVE-2025-6176 in its CHANGELOG), then `process(b"", ...)` for the output it held back,
  before any new input (its docstring; google/brotli python/tests/decompressor_test.py).

ACCEPT_ENCODING offers exactly these codings; any other one in a response is refused with
UnsupportedContentEncoding before a byte of it is decoded (zstd included: httpx would decode it
unbounded if the `zstandard` package were ever installed). A corrupt body raises
httpx.DecodingError, as httpx itself does.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from typing import Final, Protocol

import brotli
import httpx

from shared.errors import PermanentJobError

__all__ = ["ACCEPT_ENCODING", "PIECE_BYTES", "BodyDecoder", "UnsupportedContentEncoding"]

ACCEPT_ENCODING: Final = "gzip, deflate, br"
PIECE_BYTES: Final = 32 * 1024
# Brotli checks its limit only between output blocks (the first is 32752 bytes, the next ones
# bigger; google/brotli#1396, #1460): a limit under one block yields one block per call, while
# a limit of 32 KiB already yields three.
_BROTLI_OUTPUT_LIMIT: Final = PIECE_BYTES // 2


class UnsupportedContentEncoding(PermanentJobError):
    """The response uses a content coding this client does not offer and cannot decode with a bound."""

    def __init__(self, coding: str) -> None:
        super().__init__(f"content coding {coding!r} is not accepted", kind="unsupported-content-encoding")
        self.coding = coding


class _Stage(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]:
        """Decoded output of `data`, in pieces of at most about PIECE_BYTES, made as they are asked for."""
        ...

    def finish(self) -> Iterator[bytes]:
        """What is left once all input was fed."""
        ...


class _Zlib:
    """gzip (`wbits` MAX_WBITS | 16), zlib-wrapped deflate (MAX_WBITS) or raw deflate (-MAX_WBITS)."""

    def __init__(self, wbits: int) -> None:
        self._decompressor = zlib.decompressobj(wbits)

    def feed(self, data: bytes) -> Iterator[bytes]:
        pending = data
        while True:
            try:
                out = self._decompressor.decompress(pending, PIECE_BYTES)
            except zlib.error as exc:
                raise httpx.DecodingError(str(exc)) from exc
            if out:
                yield out
            if self._decompressor.eof:
                return  # bytes after the end of the stream are ignored, as httpx does
            pending = self._decompressor.unconsumed_tail
            # A full piece may leave output behind even with all input consumed: ask again.
            if not pending and len(out) < PIECE_BYTES:
                return

    def finish(self) -> Iterator[bytes]:
        # Each feed drained its output, so this only collects what zlib may still hold.
        return self.feed(b"")


class _Deflate:
    """Deflate as servers send it: zlib-wrapped per RFC 9110, or raw deflate (which httpx accepts too)."""

    def __init__(self) -> None:
        self._stage: _Zlib | None = None
        self._held = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._stage is None:
            self._held += data
            if len(self._held) < 2:
                return iter(())
            data, self._held = self._held, b""
            self._stage = _Zlib(zlib.MAX_WBITS if _zlib_header(data) else -zlib.MAX_WBITS)
        return self._stage.feed(data)

    def finish(self) -> Iterator[bytes]:
        if self._stage is None:
            self._stage = _Zlib(-zlib.MAX_WBITS)
            return self._stage.feed(self._held)
        return self._stage.finish()


def _zlib_header(data: bytes) -> bool:
    """RFC 1950: compression method 8, window at most 32 KiB, and the 16-bit header a multiple of 31."""
    return data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and ((data[0] << 8) | data[1]) % 31 == 0


class _Brotli:
    def __init__(self) -> None:
        self._decompressor = brotli.Decompressor()

    def feed(self, data: bytes) -> Iterator[bytes]:
        if not data:
            return
        out = self._process(data)
        # Output left over from a call comes out of `process(b"")`, one block per call.
        while out:
            yield out
            out = self._process(b"")
        if not self._decompressor.can_accept_more_data():  # never seen; refuse rather than spin
            raise httpx.DecodingError("brotli decoder holds output it does not hand back")

    def finish(self) -> Iterator[bytes]:
        return iter(())  # every feed collected all its output; a truncated stream is let through, as httpx does

    def _process(self, data: bytes) -> bytes:
        try:
            out: bytes = self._decompressor.process(data, output_buffer_limit=_BROTLI_OUTPUT_LIMIT)
        except brotli.error as exc:
            raise httpx.DecodingError(str(exc)) from exc
        return out


class _Refused:
    """A coding we never offered: refused when its first byte arrives (an empty body is fine)."""

    def __init__(self, coding: str) -> None:
        self._coding = coding

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            raise UnsupportedContentEncoding(self._coding)
        return iter(())

    def finish(self) -> Iterator[bytes]:
        return iter(())


def _stage(coding: str) -> _Stage:
    if coding in ("gzip", "x-gzip"):  # RFC 9110 8.4.1.3: x-gzip is gzip
        return _Zlib(zlib.MAX_WBITS | 16)
    if coding == "deflate":
        return _Deflate()
    if coding == "br":
        return _Brotli()
    return _Refused(coding)


class BodyDecoder:
    """Undoes a response's Content-Encoding, every step bounded; see the module docstring."""

    def __init__(self, headers: httpx.Headers) -> None:
        codings = [value.strip().lower() for value in headers.get_list("content-encoding", split_commas=True)]
        # Codings are listed in the order they were applied, so they come off last first.
        self._stages = [_stage(coding) for coding in reversed(codings) if coding not in ("", "identity")]

    def feed(self, data: bytes) -> Iterator[bytes]:
        """The decoded output of one raw chunk, piece by piece."""
        return self._through(0, [data])

    def finish(self) -> Iterator[bytes]:
        """The decoded output left once the raw body has ended."""
        for index, stage in enumerate(self._stages):
            yield from self._through(index + 1, stage.finish())

    def _through(self, start: int, pieces: Iterable[bytes]) -> Iterator[bytes]:
        for stage in self._stages[start:]:
            pieces = _fed(stage, pieces)
        yield from pieces


def _fed(stage: _Stage, pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield from stage.feed(piece)
