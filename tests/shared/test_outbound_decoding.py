"""Content codings through OutboundClient: the size cap counts decoded bytes, decoding happens in
bounded steps (a bomb never inflates in memory), and codings that cannot be bounded are refused.

Real receivers on loopback answer each body with its Content-Encoding header; both the async
client and its sync twin (WeasyPrint's path) are exercised.
"""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import pytest

from shared.errors import PermanentJobError
from shared.outbound import (
    OutboundClient,
    OutboundNetworkError,
    OutboundResponse,
    ResponseTooLarge,
    UnsupportedContentEncoding,
)
from shared.outbound_decoding import PIECE_BYTES, BodyDecoder
from tests.shared.test_outbound_client import LOOPBACK_ALLOWED
from tests.support.bombs import BOMB_BYTES, CODINGS, MiB, bomb, encoded, traced_peak
from tests.support.receivers import Reply, http_receiver

CAP = 1 * MiB
PEAK_LIMIT = 16 * MiB  # the cap plus decoding steps; a bomb decoded in one call needs BOMB_BYTES
SAMPLE = b"".join(i.to_bytes(4, "big") for i in range(100_000))  # 400 kB, compressible, not trivial


@pytest.fixture(params=["async", "sync"])
async def fetch(request: pytest.FixtureRequest):
    """`await fetch(url, **kwargs)` through the async client or through its sync twin."""
    outbound = OutboundClient(LOOPBACK_ALLOWED)

    async def run(url: str, **kwargs: Any) -> OutboundResponse:
        if request.param == "sync":
            return outbound.request_sync("GET", url, **kwargs)
        return await outbound.request("GET", url, **kwargs)

    yield run
    await outbound.aclose()


def served(coding: str, body: bytes) -> Reply:
    return Reply(200, {"content-encoding": coding, "content-type": "application/octet-stream"}, body=body)


async def test_accept_encoding_offers_only_codings_decoded_with_a_bound(fetch):
    with http_receiver() as receiver:
        await fetch(receiver.url)
    [seen] = receiver.requests
    assert seen.headers["accept-encoding"] == "gzip, deflate, br"


@pytest.mark.parametrize("coding", [*CODINGS, "raw-deflate"])
async def test_each_coding_is_decoded(fetch, coding):
    header = "deflate" if coding == "raw-deflate" else coding  # servers send both forms as "deflate"
    with http_receiver([served(header, encoded(coding, SAMPLE))]) as receiver:
        response = await fetch(receiver.url)
    assert (response.content, response.truncated) == (SAMPLE, False)


async def test_stacked_codings_are_undone_in_reverse_order(fetch):
    # "gzip, br": gzip was applied first, so br comes off first.
    with http_receiver([served("gzip, br", encoded("br", encoded("gzip", SAMPLE)))]) as receiver:
        response = await fetch(receiver.url)
    assert response.content == SAMPLE


async def test_identity_is_passed_through(fetch):
    with http_receiver([served("identity", SAMPLE)]) as receiver:
        response = await fetch(receiver.url)
    assert response.content == SAMPLE


@pytest.mark.parametrize("coding", [*CODINGS, "raw-deflate"])
async def test_a_bomb_is_refused_without_inflating_it(fetch, coding):
    header = "deflate" if coding == "raw-deflate" else coding
    body = bomb(coding)
    assert len(body) < CAP  # the compressed size passes the cap; only the decoded size exceeds it
    with http_receiver([served(header, body)]) as receiver, traced_peak() as peak:
        with pytest.raises(ResponseTooLarge) as raised:
            await fetch(receiver.url, max_bytes=CAP)
    assert raised.value.kind == "response-too-large"
    assert peak.bytes < PEAK_LIMIT, f"peak {peak.bytes / MiB:.1f} MiB while refusing a {BOMB_BYTES // MiB} MiB bomb"


@pytest.mark.parametrize("coding", CODINGS)
async def test_truncate_keeps_max_bytes_of_decoded_content(fetch, coding):
    with http_receiver([served(coding, bomb(coding))]) as receiver, traced_peak() as peak:
        response = await fetch(receiver.url, max_bytes=CAP, truncate=True)
    assert (response.content, response.truncated) == (bytes(CAP), True)
    assert peak.bytes < PEAK_LIMIT


async def test_a_body_just_under_the_cap_decodes_whole(fetch):
    with http_receiver([served("br", bomb("br", CAP))]) as receiver:
        response = await fetch(receiver.url, max_bytes=CAP)
    assert response.content == bytes(CAP)


@pytest.mark.parametrize("coding", ["zstd", "compress", "gzip, x-unknown"])
async def test_codings_that_cannot_be_bounded_are_refused(fetch, coding):
    with http_receiver([served(coding, b"\x28\xb5\x2f\xfd" + bytes(64))]) as receiver:
        with pytest.raises(UnsupportedContentEncoding) as raised:
            await fetch(receiver.url)
    assert isinstance(raised.value, PermanentJobError)
    assert raised.value.kind == "unsupported-content-encoding"


async def test_an_empty_body_in_an_unknown_coding_is_not_refused(fetch):
    with http_receiver([Reply(204, {"content-encoding": "zstd"})]) as receiver:
        response = await fetch(receiver.url)
    assert (response.status_code, response.content) == (204, b"")


async def test_a_corrupt_body_is_a_network_error_as_before(fetch):
    with http_receiver([served("gzip", b"\x1f\x8b\x08\x00garbage-not-deflate")]) as receiver:
        with pytest.raises(OutboundNetworkError):
            await fetch(receiver.url)


# ---- the decoder alone -------------------------------------------------------------------------


@pytest.mark.parametrize("coding", [*CODINGS, "raw-deflate"])
def test_every_decoded_piece_is_bounded(coding):
    header = "deflate" if coding == "raw-deflate" else coding
    pieces = BodyDecoder(httpx.Headers({"content-encoding": header})).feed(bomb(coding))
    sizes = [len(piece) for piece in itertools.islice(pieces, 100)]
    assert len(sizes) == 100 and max(sizes) <= PIECE_BYTES


@pytest.mark.parametrize("coding", [*CODINGS, "raw-deflate"])
def test_a_body_fed_one_byte_at_a_time_decodes_whole(coding):
    header = "deflate" if coding == "raw-deflate" else coding
    decoder = BodyDecoder(httpx.Headers({"content-encoding": header}))
    body = encoded(coding, SAMPLE)
    decoded = [piece for i in range(len(body)) for piece in decoder.feed(body[i : i + 1])]
    assert b"".join([*decoded, *decoder.finish()]) == SAMPLE
