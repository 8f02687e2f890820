"""The static outbound rules (submit-time check) and the address classifier, as tables."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import BaseModel, ValidationError

from shared.outbound import DestinationNotAllowed, OutboundUrl, check_url
from shared.outbound_policy import OutboundPolicy, address_category
from tests.conftest import make_settings

UNUSED_DB = "postgresql://127.0.0.1:9/unused"  # these tests never touch a database

# Every address form the service must refuse. Reused by the connect-time tests in
# test_outbound_client.py, which hand each one out through a fake resolver.
REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.255.255.254",
    "0.0.0.0",
    "0.1.2.3",
    "::",
    "::1",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "100.64.0.1",
    "100.127.255.255",
    "169.254.169.254",
    "169.254.0.1",
    "192.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "198.19.255.255",
    "198.51.100.1",
    "203.0.113.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::ffff:127.0.0.1",
    "::ffff:7f00:1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "::127.0.0.1",
    "::8.8.8.8",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "64:ff9b:1::1",
    "fd00:ec2::254",
    "fc00::1",
    "fd00::1",
    "fdaa::3",
    "fdaa:0:1:a7b:1::2",
    "fe80::1",
    "fec0::1",
    "ff02::1",
    "ff05::1:3",
    "2001:db8::1",
    "2001::1",
    "2002:7f00:1::1",
    "100::1",
    "3fff::1",
]
ALLOWED_ADDRESSES = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "::ffff:8.8.8.8",
    "2001:4860:4860::8888",
    "2606:4700:4700::1111",
    "64:ff9b::808:808",
]


def _url_for(address: str) -> str:
    return f"http://[{address}]/" if ":" in address else f"http://{address}/"


@pytest.fixture(scope="module")
def strict():
    return make_settings(UNUSED_DB)


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_classifier_refuses(address):
    assert address_category(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ALLOWED_ADDRESSES)
def test_classifier_allows_public_unicast(address):
    assert address_category(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_literal_address_in_url_is_refused(strict, address):
    with pytest.raises(DestinationNotAllowed) as raised:
        check_url(_url_for(address), strict)
    assert raised.value.kind == "destination-not-allowed"


@pytest.mark.parametrize(
    "url",
    [
        # Spellings resolvers accept for 127.0.0.1 and 0.0.0.0 without any DNS.
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://0177.0.0.1/",
        "http://0/",
        "http://0x/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[fe80::1%25eth0]/",
        # Names that are internal by construction.
        "http://localhost/",
        "http://LOCALHOST./",
        "http://app.localhost/",
        "http://metadata.google.internal/",
        "http://myapp.internal/",
        "http://_api.internal:4280/",
        "http://printer.local/",
        "http://intranet/",
        "http://ip6-localhost/",
        # Schemes, credentials and ports.
        "file:///etc/passwd",
        "gopher://example.com/",
        "ftp://example.com/",
        "data:text/plain,hi",
        "https://user@example.com/",
        "https://user:pw@example.com/",
        "https://example.com:8443/",
        "http://example.com:22/",
        "http://[::1]:80/",
        "not a url",
        "",
    ],
)
def test_refused_urls(strict, url):
    with pytest.raises(DestinationNotAllowed):
        check_url(url, strict)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://example.com:80/x",
        "https://example.com:443/",
        "HTTPS://Example.COM/",
        "http://8.8.8.8/",
        "http://[::ffff:8.8.8.8]/",
        "http://[2001:4860:4860::8888]/",
        "https://bücher.example/",
    ],
)
def test_public_urls_pass(strict, url):
    check_url(url, strict)


def test_error_names_a_category_not_the_address(strict):
    with pytest.raises(DestinationNotAllowed) as raised:
        check_url("http://10.1.2.3/", strict)
    assert raised.value.category == "private address"
    assert "10.1.2.3" not in str(raised.value)


def test_allowlisted_address_lifts_address_and_port_rules():
    policy = OutboundPolicy.from_settings(make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1", "10.0.0.0/8"]))
    policy.check_url("http://127.0.0.1:8080/")
    policy.check_url("http://[::ffff:127.0.0.1]:8080/")  # the mapped form of a listed address is listed too
    policy.check_url("http://10.20.30.40:9000/")
    policy.check_address("10.9.9.9")
    with pytest.raises(DestinationNotAllowed):
        policy.check_url("http://127.0.0.2/")
    with pytest.raises(DestinationNotAllowed):
        policy.check_address("192.168.0.1")


def test_allowlisted_name_lifts_name_and_port_rules_but_not_address_rules():
    policy = OutboundPolicy.from_settings(make_settings(UNUSED_DB, outbound_allowlist=["hooks.internal"]))
    policy.check_url("http://hooks.internal:8080/")
    with pytest.raises(DestinationNotAllowed):
        policy.check_address("fdaa::3")  # what the name resolves to is still checked at connect time
    with pytest.raises(DestinationNotAllowed):
        policy.check_url("http://other.internal/")


def test_allow_private_lifts_name_and_address_rules_not_ports():
    policy = OutboundPolicy.from_settings(make_settings(UNUSED_DB, outbound_allow_private=True))
    policy.check_url("http://localhost/")
    policy.check_url("http://10.0.0.1/")
    policy.check_address("127.0.0.1")
    with pytest.raises(DestinationNotAllowed):
        policy.check_url("http://localhost:8080/")
    with pytest.raises(DestinationNotAllowed):
        policy.check_url("file:///etc/passwd")


class _Model(BaseModel):
    url: OutboundUrl


def test_outbound_url_field_is_checked_when_settings_are_in_the_context(strict):
    _Model.model_validate({"url": "http://127.0.0.1/"})  # no settings: only the shape is checked
    with pytest.raises(ValidationError) as raised:
        _Model.model_validate({"url": "http://127.0.0.1/"}, context={"settings": strict})
    [error] = raised.value.errors()
    assert error["type"] == "destination_not_allowed"
    assert error["msg"] == "destination not allowed: loopback address"
    assert _Model.model_validate({"url": "https://example.com/"}, context={"settings": strict})


def test_outbound_url_field_refuses_other_schemes():
    with pytest.raises(ValidationError):
        _Model.model_validate({"url": "ftp://example.com/"})


# The submit-time check remembers URLs it passed (a tenant posts to the same endpoints over and
# over); what it remembers must never answer for another policy, nor for a URL it refused.
def test_a_url_passed_under_one_policy_is_checked_again_under_another():
    permissive = make_settings(UNUSED_DB, outbound_allow_private=True)
    listed = make_settings(UNUSED_DB, outbound_allowlist=["127.0.0.1"])
    strict = make_settings(UNUSED_DB)
    for url in ("http://127.0.0.1/", "http://localhost/"):
        check_url(url, permissive)
        check_url(url, permissive)
        with pytest.raises(DestinationNotAllowed):
            check_url(url, strict)
    check_url("http://127.0.0.1/", listed)
    with pytest.raises(DestinationNotAllowed):
        check_url("http://localhost/", listed)
    with pytest.raises(DestinationNotAllowed):
        check_url("http://127.0.0.1/", strict)


def test_a_refused_url_is_refused_every_time_and_passes_where_allowed():
    strict = make_settings(UNUSED_DB)
    permissive = make_settings(UNUSED_DB, outbound_allow_private=True)
    for _ in range(3):
        with pytest.raises(DestinationNotAllowed) as raised:
            check_url("http://10.1.2.4/", strict)
        assert raised.value.category == "private address"
    check_url("http://10.1.2.4/", permissive)
    with pytest.raises(DestinationNotAllowed):
        check_url("http://10.1.2.4/", strict)
    check_url("https://example.com/hook", strict)
    with pytest.raises(DestinationNotAllowed):
        check_url("https://example.com:8080/hook", strict)
