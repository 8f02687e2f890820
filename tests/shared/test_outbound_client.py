"""OutboundClient against real receivers on loopback, with a fake resolver playing DNS."""

from __future__ import annotations

import socket

import httpx
import pytest

from shared.errors import PermanentJobError, RetryableJobError
from shared.outbound import (
    DestinationNotAllowed,
    OutboundClient,
    OutboundNetworkError,
    OutboundTimeout,
    ResponseTooLarge,
    TooManyRedirects,
)
from tests.conftest import make_settings
from tests.shared.test_outbound_policy import REFUSED_ADDRESSES, UNUSED_DB
from tests.support.receivers import Reply, http_receiver

LOOPBACK_ALLOWED = make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1"])


class FakeDns:
    """Answers from a script: one answer per lookup, the last one repeating; records each lookup."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


@pytest.fixture
async def client():
    outbound = OutboundClient(LOOPBACK_ALLOWED)
    yield outbound
    await outbound.aclose()


async def test_allowlisted_loopback_receiver_is_reached(client):
    with http_receiver([(201, {"x-answer": "yes"}, 0.0)]) as receiver:
        response = await client.request("POST", f"{receiver.url}/hook", headers={"x-test": "1"}, content=b"hello")
    assert (response.status_code, response.headers["x-answer"]) == (201, "yes")
    [seen] = receiver.requests
    assert (seen.method, seen.path, seen.body, seen.headers["x-test"]) == ("POST", "/hook", b"hello", "1")
    assert response.url == f"{receiver.url}/hook"


def test_sync_twin_reaches_the_same_receiver():
    outbound = OutboundClient(LOOPBACK_ALLOWED)
    try:
        with http_receiver([Reply(200, {}, 0.0, b"body")]) as receiver:
            response = outbound.request_sync("GET", f"{receiver.url}/x")
    finally:
        outbound.close()
    assert (response.status_code, response.content) == (200, b"body")
    assert [r.path for r in receiver.requests] == ["/x"]


async def test_loopback_is_refused_without_the_allowlist():
    outbound = OutboundClient(make_settings(UNUSED_DB))
    try:
        with http_receiver() as receiver:
            with pytest.raises(DestinationNotAllowed):
                await outbound.request("GET", receiver.url)
    finally:
        await outbound.aclose()
    assert receiver.requests == []


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
async def test_name_resolving_to_a_refused_address_is_refused_at_connect_time(address):
    dns = FakeDns([address])
    outbound = OutboundClient(make_settings(UNUSED_DB), resolver=dns)
    try:
        with pytest.raises(DestinationNotAllowed) as raised:
            await outbound.request("GET", "https://hooks.example.com/deliver")
    finally:
        await outbound.aclose()
    assert dns.lookups == [("hooks.example.com", 443)]
    assert raised.value.kind == "destination-not-allowed"
    assert isinstance(raised.value, PermanentJobError)
    assert address not in str(raised.value)


@pytest.mark.parametrize("answer", [["93.184.215.14", "10.0.0.1"], ["2606:4700:4700::1111", "fdaa::3"]])
async def test_any_refused_address_in_the_answer_refuses_the_name(answer):
    outbound = OutboundClient(make_settings(UNUSED_DB), resolver=FakeDns(answer))
    try:
        with pytest.raises(DestinationNotAllowed):
            await outbound.request("GET", "https://hooks.example.com/")
    finally:
        await outbound.aclose()


def test_sync_twin_checks_resolved_addresses_too():
    outbound = OutboundClient(make_settings(UNUSED_DB), resolver=FakeDns(["169.254.169.254"]))
    try:
        with pytest.raises(DestinationNotAllowed):
            outbound.request_sync("GET", "http://images.example.com/cat.jpg")
    finally:
        outbound.close()


async def test_dns_rebinding_cannot_reach_loopback():
    # "rebind.test" answers the allowlisted 127.0.0.2 first, then 127.0.0.1 (not allowlisted),
    # where an internal service listens on the same port. A client that checked one lookup and
    # connected after another would reach the internal service.
    settings = make_settings(UNUSED_DB, outbound_allowlist=["rebind.test", "127.0.0.2"])
    dns = FakeDns(["127.0.0.2"], ["127.0.0.1"])
    with http_receiver(host="127.0.0.2") as public:
        with http_receiver(host="127.0.0.1", port=public.port) as internal:
            url = f"http://rebind.test:{public.port}/hook"
            first = OutboundClient(settings, resolver=dns)
            try:
                response = await first.request("POST", url, content=b"{}")
            finally:
                await first.aclose()
            second = OutboundClient(settings, resolver=dns)
            try:
                with pytest.raises(DestinationNotAllowed):
                    await second.request("POST", url, content=b"{}")
            finally:
                await second.aclose()
    assert response.status_code == 200
    assert dns.lookups == [("rebind.test", public.port)] * 2  # one lookup per connection, no second one
    [seen] = public.requests
    assert seen.headers["host"] == f"rebind.test:{public.port}"  # connected by address, Host kept
    assert internal.requests == []


async def test_redirect_to_a_private_address_is_refused(client):
    with http_receiver([(302, {"location": "http://10.0.0.1/admin"}, 0.0)]) as receiver:
        with pytest.raises(DestinationNotAllowed) as raised:
            await client.request("GET", receiver.url)
    assert raised.value.category == "private address"
    assert len(receiver.requests) == 1


# 2130706434 is 127.0.0.2 spelled as one number.
@pytest.mark.parametrize(
    "location", ["http://127.0.0.2/", "http://localhost/", "file:///etc/passwd", "http://[::1]/", "http://2130706434/"]
)
async def test_redirect_hops_are_checked_like_the_first_url(client, location):
    with http_receiver([(301, {"location": location}, 0.0)]) as receiver:
        with pytest.raises(DestinationNotAllowed):
            await client.request("GET", receiver.url)


async def test_redirect_to_a_name_resolving_to_a_private_address_is_refused():
    settings = make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1"])
    outbound = OutboundClient(settings, resolver=FakeDns(["192.168.1.10"]))
    try:
        with http_receiver([(307, {"location": "https://cdn.example.com/x.png"}, 0.0)]) as receiver:
            with pytest.raises(DestinationNotAllowed):
                await outbound.request("GET", receiver.url)
    finally:
        await outbound.aclose()


async def test_allowed_redirects_are_followed_and_302_post_becomes_get(client):
    with http_receiver([(302, {"location": "/next"}, 0.0), Reply(200, {}, 0.0, b"done")]) as receiver:
        response = await client.request("POST", f"{receiver.url}/first", content=b"payload")
    assert (response.status_code, response.content, response.url) == (200, b"done", f"{receiver.url}/next")
    assert [(r.method, r.path, r.body) for r in receiver.requests] == [
        ("POST", "/first", b"payload"),
        ("GET", "/next", b""),
    ]


async def test_redirects_are_returned_not_followed_when_asked(client):
    with http_receiver([(302, {"location": "/next"}, 0.0)]) as receiver:
        response = await client.request("POST", receiver.url, content=b"x", follow_redirects=False)
    assert (response.status_code, response.headers["location"]) == (302, "/next")
    assert len(receiver.requests) == 1


async def test_redirect_loops_stop_at_the_limit(client):
    with http_receiver([(302, {"location": "/again"}, 0.0)]) as receiver:
        with pytest.raises(TooManyRedirects):
            await client.request("GET", receiver.url, max_redirects=3)
    assert len(receiver.requests) == 4


async def test_size_cap_stops_a_streamed_body(client):
    total = 64 * 1024 * 1024
    with http_receiver([Reply(200, {}, 0.0, stream_bytes=total)]) as receiver:
        with pytest.raises(ResponseTooLarge) as raised:
            await client.request("GET", receiver.url, max_bytes=256 * 1024)
    assert raised.value.kind == "response-too-large"
    # The client hung up: the receiver could not push the whole body into the connection.
    assert receiver.bytes_streamed < total


def test_size_cap_stops_a_streamed_body_in_the_sync_twin():
    total = 64 * 1024 * 1024
    outbound = OutboundClient(LOOPBACK_ALLOWED)
    try:
        with http_receiver([Reply(200, {}, 0.0, stream_bytes=total)]) as receiver:
            with pytest.raises(ResponseTooLarge):
                outbound.request_sync("GET", receiver.url, max_bytes=256 * 1024)
    finally:
        outbound.close()
    assert receiver.bytes_streamed < total


async def test_declared_length_over_the_cap_is_refused(client):
    with http_receiver([Reply(200, {}, 0.0, b"x" * 5000)]) as receiver:
        with pytest.raises(ResponseTooLarge):
            await client.request("GET", receiver.url, max_bytes=4096)


async def test_truncate_keeps_the_first_max_bytes(client):
    with http_receiver([Reply(200, {}, 0.0, stream_bytes=8 * 1024 * 1024)]) as receiver:
        response = await client.request("GET", receiver.url, max_bytes=1000, truncate=True)
    assert (len(response.content), response.truncated) == (1000, True)


async def test_slow_answer_times_out_as_retryable(client):
    with http_receiver([(200, {}, 30.0)]) as receiver:
        with pytest.raises(OutboundTimeout) as raised:
            await client.request("GET", receiver.url, timeout_seconds=0.5)
    assert isinstance(raised.value, RetryableJobError)
    assert raised.value.kind == "timeout"


def test_slow_answer_times_out_in_the_sync_twin():
    outbound = OutboundClient(LOOPBACK_ALLOWED)
    try:
        with http_receiver([(200, {}, 30.0)]) as receiver:
            with pytest.raises(OutboundTimeout):
                outbound.request_sync("GET", receiver.url, timeout_seconds=0.5)
    finally:
        outbound.close()


async def test_refused_connection_is_a_retryable_network_error(client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]  # nothing listens once the socket closes
    with pytest.raises(OutboundNetworkError) as raised:
        await client.request("GET", f"http://127.0.0.1:{closed_port}/")
    assert raised.value.kind == "network"


async def test_unresolvable_name_is_a_retryable_network_error():
    def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    outbound = OutboundClient(make_settings(UNUSED_DB), resolver=no_such_host)
    try:
        with pytest.raises(OutboundNetworkError):
            await outbound.request("GET", "https://nowhere.example.com/")
    finally:
        await outbound.aclose()


async def test_environment_proxies_are_ignored(client, monkeypatch):
    with http_receiver() as proxy, http_receiver() as target:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy.url)
        # Control: a client that trusts the environment really does go through the proxy here.
        async with httpx.AsyncClient(trust_env=True) as trusting:
            await trusting.get(f"{target.url}/control")
        assert len(proxy.requests) == 1
        await client.request("GET", f"{target.url}/guarded")
    assert len(proxy.requests) == 1
    assert [r.path for r in target.requests] == ["/guarded"]
