"""Compression bombs (a tiny body that decodes to a huge one) and a peak-memory probe
(`with traced_peak() as peak:` around the code under test, then check `peak.bytes`)."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Final

import brotli

MiB: Final = 1024 * 1024
BOMB_BYTES: Final = 256 * MiB  # what every bomb below decodes to
CODINGS: Final = ("gzip", "deflate", "br")

_ZLIB_WBITS: Final = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS, "raw-deflate": -zlib.MAX_WBITS}


@cache
def bomb(coding: str, decoded_bytes: int = BOMB_BYTES) -> bytes:
    """`decoded_bytes` zero bytes in `coding` ("gzip", "deflate", "raw-deflate" or "br").

    Built one MiB at a time so making the bomb never holds what it decodes to.
    """
    block = bytes(MiB)
    blocks, rest = divmod(decoded_bytes, MiB)
    if coding == "br":
        # Quality 4 already packs 256 MiB of zeros into about 200 bytes, in a second instead of 20.
        brotli_compressor = brotli.Compressor(quality=4)
        parts = [brotli_compressor.process(block) for _ in range(blocks)]
        return b"".join([*parts, brotli_compressor.process(bytes(rest)), brotli_compressor.finish()])
    zlib_compressor = zlib.compressobj(9, zlib.DEFLATED, _ZLIB_WBITS[coding])
    parts = [zlib_compressor.compress(block) for _ in range(blocks)]
    return b"".join([*parts, zlib_compressor.compress(bytes(rest)), zlib_compressor.flush()])


@cache
def encoded(coding: str, data: bytes) -> bytes:
    """`data` in one coding, for round trips (cached: brotli's default quality 11 takes seconds here)."""
    if coding == "br":
        return bytes(brotli.compress(data))
    compressor = zlib.compressobj(6, zlib.DEFLATED, _ZLIB_WBITS[coding])
    return compressor.compress(data) + compressor.flush()


@dataclass
class Peak:
    bytes: int = 0


@contextmanager
def traced_peak() -> Iterator[Peak]:
    """The most memory Python allocated (all threads) inside the block, in `peak.bytes`.

    Decoders build their output as Python bytes, so a decode call that inflates a bomb shows here.
    """
    peak = Peak()
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    baseline = tracemalloc.get_traced_memory()[0]
    try:
        yield peak
    finally:
        peak.bytes = tracemalloc.get_traced_memory()[1] - baseline
        if started:
            tracemalloc.stop()
