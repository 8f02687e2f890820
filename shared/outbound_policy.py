"""Which destinations outbound requests may reach: the URL check and the address classifier.

Two checks share these rules. `OutboundPolicy.check_url` is static: scheme, userinfo, port, a
literal address in the URL, or a host name that is obviously internal; it runs at submit time
(422) and again on every redirect hop. `OutboundPolicy.check_address` runs at connect time on
every address the host resolved to (see shared/outbound_transport.py), which is the check that
matters: names are only a hint, addresses are what a socket reaches.

Addresses are refused by an explicit table of the IANA special-purpose ranges, with the
"not globally routable" test of `ipaddress` as a second opinion. The table comes first because
this service runs on Python 3.11 releases whose `ipaddress` tables are stale (CVE-2024-4032,
fixed in 3.11.10) and whose predicates do not look through IPv4-mapped addresses (gh-117566):
on 3.11.7 `ip_address("::7f00:1").is_global` is True. Embedded IPv4 forms (mapped, compatible,
NAT64) are unwrapped and judged by the IPv4 address they carry.

`OUTBOUND_ALLOWLIST` entries are host names or addresses/CIDRs. A listed name lifts the name
and port rules for that name but not the address rules, so a listed name that resolves to a
private address is still refused unless that address is listed too. A listed address lifts the
address and port rules. `OUTBOUND_ALLOW_PRIVATE` lifts the name and address rules (development
only); ports stay limited to 80/443 unless allowlisted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Final

import httpx
from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from shared.errors import PermanentJobError
from shared.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
ALLOWED_PORTS: Final = frozenset({80, 443})


class DestinationNotAllowed(PermanentJobError):
    """The URL, or an address its host resolves to, is one outbound requests may not reach.

    The message names a category ("loopback address"), never a resolved address, so the error
    cannot serve as an oracle for internal DNS.
    """

    def __init__(self, category: str) -> None:
        super().__init__(f"destination not allowed: {category}", kind="destination-not-allowed")
        self.category = category


def _table(rows: tuple[tuple[str, str], ...]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(net), category) for net, category in rows)


# First match wins, so narrower ranges come before the ranges that contain them.
_REFUSED_V4: Final = _table(
    (
        ("0.0.0.0/8", "unspecified address"),  # 0.0.0.0 reaches the local host on Linux
        ("10.0.0.0/8", "private address"),
        ("100.64.0.0/10", "shared (CGNAT) address"),
        ("127.0.0.0/8", "loopback address"),
        ("169.254.0.0/16", "link-local or metadata address"),
        ("172.16.0.0/12", "private address"),
        ("192.0.0.0/24", "reserved address"),
        ("192.0.2.0/24", "documentation address"),
        ("192.88.99.0/24", "reserved address"),
        ("192.168.0.0/16", "private address"),
        ("198.18.0.0/15", "benchmarking address"),
        ("198.51.100.0/24", "documentation address"),
        ("203.0.113.0/24", "documentation address"),
        ("224.0.0.0/4", "multicast address"),
        ("240.0.0.0/4", "reserved address"),  # includes 255.255.255.255
    )
)
_REFUSED_V6: Final = _table(
    (
        ("::/128", "unspecified address"),
        ("::1/128", "loopback address"),
        ("::/8", "reserved address"),  # what is left of it once embedded IPv4 forms are unwrapped
        ("64:ff9b:1::/48", "private address"),  # local-use NAT64
        ("100::/64", "reserved address"),  # discard-only
        ("2001:db8::/32", "documentation address"),
        ("2001::/23", "reserved address"),  # IETF protocol assignments, Teredo 2001::/32 included
        ("2002::/16", "reserved address"),  # 6to4, deprecated (RFC 7526)
        ("3fff::/20", "documentation address"),
        ("5f00::/16", "reserved address"),  # SRv6 SIDs
        ("fd00:ec2::254/128", "link-local or metadata address"),  # AWS IMDS over IPv6
        ("fc00::/7", "unique-local (private) address"),  # includes Fly's 6PN fdaa::/16
        ("fe80::/10", "link-local or metadata address"),
        ("fec0::/10", "site-local address"),
        ("ff00::/8", "multicast address"),
    )
)
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_INTERNAL_SUFFIXES: Final = (".localhost", ".internal", ".local", ".localdomain", ".home.arpa")


def address_category(ip: IPAddress) -> str | None:
    """The refused category of `ip`, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "scoped IPv6 address"
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            category = address_category(embedded)
            # IPv4-compatible addresses are deprecated and never routed to IPv4: refuse them all.
            if category is None and ip in _IPV4_COMPATIBLE:
                return "reserved address"
            return category
    table = _REFUSED_V4 if isinstance(ip, ipaddress.IPv4Address) else _REFUSED_V6
    for network, category in table:
        if ip in network:
            return category
    if ip.is_multicast:
        return "multicast address"
    if not ip.is_global:
        return "non-global address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped, IPv4-compatible or NAT64 address carries, if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if (ip in _IPV4_COMPATIBLE and int(ip) > 1) or ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


_NUMBER_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")


def legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address `inet_aton` would read from `host` ("127.1", "2130706433", "0x7f.0.0.1"), if any.

    getaddrinfo accepts these spellings, so a URL using one reaches that address without DNS.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER_PART.fullmatch(part) for part in parts):
        return None
    *leading, last = [_number(part) for part in parts]
    if any(value > 0xFF for value in leading) or last >= 256 ** (4 - len(leading)):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _number(part: str) -> int:
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part, 8)
    return int(part)


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host spells directly (IPv4, IPv6 or a legacy IPv4 spelling), if any."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return legacy_ipv4(host)


def name_category(host: str) -> str | None:
    """The refused category of host name `host` (lower case, no trailing dot), or None."""
    if host in _LOOPBACK_NAMES:
        return "loopback name"
    if host.endswith(_INTERNAL_SUFFIXES) or host in {"internal", "local"}:
        return "internal name"
    if "." not in host:
        # Single-label names resolve through the local search domains: internal by construction.
        return "single-label name"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundPolicy:
    """The outbound rules with the operator's opt-outs applied."""

    allowed_names: frozenset[str]
    allowed_networks: tuple[IPNetwork, ...]
    allow_private: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return _policy(tuple(settings.outbound_allowlist), settings.outbound_allow_private)

    def check_url(self, url: str | httpx.URL) -> httpx.URL:
        """Parse `url` and apply the static rules. Raises DestinationNotAllowed."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise DestinationNotAllowed("invalid URL") from exc
        if parsed.scheme not in ALLOWED_SCHEMES:
            raise DestinationNotAllowed(f"scheme {parsed.scheme or '(none)'!r}")
        if parsed.userinfo:
            raise DestinationNotAllowed("credentials in the URL")
        host = parsed.host.lower().rstrip(".")
        if not host:
            raise DestinationNotAllowed("missing host")
        literal = literal_address(host)
        if literal is not None:
            is_listed = self.is_listed_address(literal)
            category = None if is_listed or self.allow_private else address_category(literal)
        else:
            is_listed = host in self.allowed_names
            category = None if is_listed or self.allow_private else name_category(host)
        if category is not None:
            raise DestinationNotAllowed(category)
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if port not in ALLOWED_PORTS and not is_listed:
            raise DestinationNotAllowed(f"port {port}")
        return parsed

    def check_address(self, address: str) -> None:
        """Refuse a resolved address outbound requests may not connect to. Raises DestinationNotAllowed."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as exc:
            raise DestinationNotAllowed("unparseable address") from exc
        if self.allow_private or self.is_listed_address(ip):
            return
        category = address_category(ip)
        if category is not None:
            raise DestinationNotAllowed(category)

    def is_listed_address(self, ip: IPAddress) -> bool:
        """Whether `ip` (or the IPv4 address it embeds, or an IPv4 address in its IPv4-mapped form)
        is inside an allowlisted network: a URL's `[::ffff:a.b.c.d]` is stored as a.b.c.d
        (requested_url), and the address allowed at submit must be allowed when dialled."""
        candidates: list[IPAddress] = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_ipv4(ip)) is not None:
            candidates.append(embedded)
        if isinstance(ip, ipaddress.IPv4Address):
            candidates.append(ipaddress.IPv6Address(f"::ffff:{ip}"))
        return any(candidate in network for candidate in candidates for network in self.allowed_networks)


@lru_cache(maxsize=32)
def _policy(allowlist: tuple[str, ...], allow_private: bool) -> OutboundPolicy:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in (item.strip().lower() for item in allowlist):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            names.add(entry.rstrip("."))
    return OutboundPolicy(allowed_names=frozenset(names), allowed_networks=tuple(networks), allow_private=allow_private)


def check_url(url: str, settings: Settings) -> None:
    """The submit-time check of an outbound URL. Raises DestinationNotAllowed."""
    _passes(OutboundPolicy.from_settings(settings), url)


@lru_cache(maxsize=1024)
def _passes(policy: OutboundPolicy, url: str) -> None:
    """`policy.check_url(url)`, remembered once it passed: a tenant sends its jobs to the same few
    endpoints again and again, and parsing the URL was two thirds of a webhook request's
    validation (16 of 24 us). The verdict depends on the URL text and the policy alone (no DNS, no
    clock), both in the key; a refusal raises, and lru_cache keeps no exception, so a refused URL
    is checked again every time."""
    policy.check_url(url)


def _checked_when_settings_known(url: str, info: ValidationInfo) -> str:
    settings = (info.context or {}).get("settings")
    if isinstance(settings, Settings):
        try:
            check_url(url, settings)
        except DestinationNotAllowed as exc:
            raise PydanticCustomError("destination_not_allowed", "{reason}", {"reason": str(exc)}) from None
    return url


OutboundUrl = Annotated[
    str,
    Field(min_length=1, max_length=2048, pattern=r"^[Hh][Tt][Tt][Pp][Ss]?://"),
    AfterValidator(_checked_when_settings_known),
]
"""An http(s) URL field; checked against the outbound rules when the validation context carries
`{"settings": Settings}` (the ingress passes it), so a refused destination is a 422 at submit."""


@lru_cache(maxsize=1024)
def requested_url(url: str) -> str:
    """`url` as the client will request it, one spelling per receiver: httpx's form (IDNA,
    full-width dots, case, default port) and a literal address in its standard form (httpx keeps
    `[::0:1]`, `16843009` or `1.1.257` as written; the checks above read them as addresses),
    IPv4-mapped IPv6 as IPv4. A per-host rate limit reads the URL a webhooks job stores, so two
    spellings of one receiver must be one. Raises httpx.InvalidURL. Remembered, as `_passes` is:
    the text alone decides it, and a tenant posts to the same few URLs (a refusal is not kept)."""
    parsed = httpx.URL(url)
    address = literal_address(parsed.host.rstrip("."))  # as the checks read it: `16843009.` too
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # the same receiver as the plain IPv4 address
        parsed = parsed.copy_with(host=str(address))
    return str(parsed)


def _as_requested(url: str) -> str:
    try:
        return requested_url(url)
    except httpx.InvalidURL:
        raise PydanticCustomError("invalid_url", "not a valid URL") from None


CallbackUrl = Annotated[OutboundUrl, Field(pattern=r"^https://"), AfterValidator(_as_requested)]
"""An https URL notified by a signed webhook (a job's, a batch's callback): stored as requested,
as a webhook's URL is, since its delivery is a webhooks job under the same per-host rate limit."""
