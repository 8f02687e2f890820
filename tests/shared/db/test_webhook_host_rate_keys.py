"""One host is one rate window however a webhook's URL spells it (from a final adversarial review).

httpx, which delivers the webhook, maps these spellings to one host; the URL a job stores was the
tenant's text, so job_rate_key (SQL: lower case, trailing dots) gave each spelling a window of its
own and a per-host limit could be multiplied. The request model now stores the URL as httpx
will request it (IDNA, full-width dots, case, default port)."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from shared.schemas.webhooks import WebhookRequest
from tests.shared.db.test_claims_under_locks import claim, insert, queue_with

SPELLINGS = {
    "ideographic-full-stop": ("https://h1.example/a", "https://h1\u3002example/b"),
    "fullwidth-full-stop": ("https://h1.example/a", "https://h1\uff0eexample/b"),
    "punycode-vs-unicode": ("https://b\u00fccher.example/a", "https://xn--bcher-kva.example/b"),
    "upper-unicode": ("https://b\u00fccher.example/a", "https://B\u00dcCHER.example/b"),
    "port-and-case": ("https://h1.example/a", "HTTPS://H1.Example:443/b"),
}


def stored_url(url: str) -> str:
    """The URL a webhook job stores for `url` (what ingress validates and keeps)."""
    return WebhookRequest.model_validate({"url": url, "event": "a.b", "payload": {}}).function_args()["url"]


@pytest.mark.parametrize("pair", SPELLINGS.values(), ids=SPELLINGS.keys())
def test_one_host_spelled_two_ways_shares_one_rate_window(database_url: str, pair: tuple[str, str]) -> None:
    first, second = pair
    assert httpx.URL(first).host == httpx.URL(second).host  # one receiving host to the client
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'", limit=100)
        insert(conn, "t", url=stored_url(first))
        insert(conn, "t", url=stored_url(second))
        assert len(claim(conn, 5)) == 1


def test_the_stored_url_is_the_one_requested() -> None:
    for url in ("https://a.example", "https://a.example/x?y=1#f", "https://u:p@h1.example/d", "http://[::1]:8080/x"):
        assert stored_url(url) == str(httpx.URL(url)) == url  # ordinary URLs are kept as sent


# From the final review: httpx keeps a literal address as written, so one address had a window
# per spelling (IPv6 zero compression, leading zeros, IPv4-mapped; legacy IPv4 forms, which the
# outbound policy and the resolver read as the dotted address).
ONE_ADDRESS = {
    "ipv6-zero-compression": ("https://[2606:4700:4700::1111]/a", "https://[2606:4700:4700:0:0:0:0:1111]/b"),
    "ipv6-leading-zeros": ("https://[2606:4700:4700::1111]/a", "https://[2606:4700:4700:0000::1111]/b"),
    "ipv4-mapped": ("https://[::ffff:1.1.1.1]/a", "https://[::ffff:101:101]/b"),
    "ipv4-mapped-and-plain": ("https://1.1.1.1/a", "https://[::ffff:1.1.1.1]/b"),
    "ipv4-decimal": ("https://1.1.1.1/a", "https://16843009/b"),
    "ipv4-hex": ("https://1.1.1.1/a", "https://0x01010101/b"),
    "ipv4-short": ("https://1.1.1.1/a", "https://1.1.257/b"),
}


# From the last review: a callback is a webhooks job too (its URL copied from meta.callbackUrl by
# the statement that makes a job final, migrations 0003/0005/0008), so a callback URL spelled
# another way was another window for the same receiver: every callback URL is stored as the
# webhook's is.
CALLBACK_SPELLINGS = {
    **{name: pair for name, pair in {**SPELLINGS, **ONE_ADDRESS}.items() if pair[1].startswith("https://")},
    "port-and-host-case": ("https://h1.example/a", "https://H1.Example:443/b"),  # callbacks: https in lower case
}


def stored_callback_urls(url: str) -> list[str]:
    """The callback URLs kept for `url`: a job's options.callbackUrl, a batch's and a bulk email's."""
    from shared.schemas.batches import BatchRequest
    from shared.schemas.common import JobOptions
    from shared.schemas.emails import BulkEmailRequest

    bulk = {"subject": "s", "text": "t", "recipients": [{"to": "a@example.com"}], "callbackUrl": url}
    return [
        str(JobOptions.model_validate({"callbackUrl": url}).callback_url),
        str(BatchRequest.model_validate({"jobs": [{"queue": "webhooks"}], "callbackUrl": url}).callback_url),
        str(BulkEmailRequest.model_validate(bulk).callback_url),
    ]


@pytest.mark.parametrize("pair", CALLBACK_SPELLINGS.values(), ids=CALLBACK_SPELLINGS.keys())
def test_a_callback_to_a_host_spelled_another_way_shares_its_rate_window(
    database_url: str, pair: tuple[str, str]
) -> None:
    first, second = pair
    with psycopg.connect(database_url, autocommit=True) as conn:
        keys = {
            url: conn.execute(
                "SELECT job_rate_key('host:url', 't', jsonb_build_object('url', %s::text))", (url,)
            ).fetchone()[0]  # type: ignore[index]
            for url in [stored_url(first), *stored_callback_urls(second)]
        }
    assert len(set(keys.values())) == 1, keys


# From the third review: a literal address with a trailing dot, which the outbound policy reads
# as the address (it strips the dot), kept its own window.
TRAILING_DOT = {
    "legacy-trailing-dot": ("https://1.1.1.1/a", "https://16843009./b"),
    "hex-trailing-dot": ("https://1.1.1.1/a", "https://0x01010101./b"),
    "dotted-trailing-dot": ("https://1.1.1.1/a", "https://1.1.1.1./b"),
}


@pytest.mark.parametrize("pair", {**ONE_ADDRESS, **TRAILING_DOT}.values(), ids={**ONE_ADDRESS, **TRAILING_DOT}.keys())
def test_one_address_is_one_rate_window_however_its_url_spells_it(database_url: str, pair: tuple[str, str]) -> None:
    first, second = pair
    with psycopg.connect(database_url, autocommit=True) as conn:
        queue_with(conn, "rate_limit = 1, rate_period_seconds = 60, rate_key = 'host:url'", limit=100)
        insert(conn, "t", url=stored_url(first))
        insert(conn, "t", url=stored_url(second))
        assert len(claim(conn, 5)) == 1


def test_an_allowlisted_mapped_address_is_allowed_in_the_form_it_is_stored() -> None:
    """From the third review: OUTBOUND_ALLOWLIST=::ffff:10.0.0.5 let https://[::ffff:10.0.0.5]/
    through at submit; stored as https://10.0.0.5/, the connection's own check refused it, so an
    accepted webhook failed for good. The allowlist now lists an address in both forms."""
    from shared.outbound_policy import OutboundPolicy, literal_address
    from shared.settings import Settings

    for listed, url in [
        ("::ffff:10.0.0.5", "https://[::ffff:10.0.0.5]/hook"),
        ("10.0.0.5", "https://[::ffff:a00:5]/x"),
    ]:
        settings = Settings(_env_file=None, outbound_allowlist=[listed])  # type: ignore[call-arg]
        stored = WebhookRequest.model_validate(
            {"url": url, "event": "a.b", "payload": {}}, context={"settings": settings}
        ).function_args()["url"]
        dialled = literal_address(httpx.URL(stored).host)
        assert dialled is not None
        OutboundPolicy.from_settings(settings).check_address(str(dialled))  # raises when refused
