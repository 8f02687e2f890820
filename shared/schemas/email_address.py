"""One mailbox (`addr` or `Name <addr>`) parsed safely, with no way to smuggle in a second one.

A recipient field is one mailbox, never a list: the separators that would expand it (`,` `;`
`:`), comments (`(...)`) and any control or line-break character are refused, so the address
that reaches the envelope is exactly the one that was validated. The email library re-quotes
display names when it writes headers, so a stored mailbox never becomes header text by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.headerregistry import Address
from typing import Final

MAX_MAILBOX_CHARS: Final = 512

# Control characters, DEL, C1 controls (NEL among them) and the Unicode line/paragraph
# separators: str.splitlines() breaks on all of them, and older email generators fold on
# splitlines() (CVE-2024-6923), so none may reach a header.
_UNSAFE_HEADER_CHARS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# `addr`, `Name <addr>` or `"Name" <addr>`; an unquoted name may not contain specials that
# change the meaning of an address list, a quoted one may not contain quotes or backslashes.
_MAILBOX: Final = re.compile(
    r'^\s*(?:(?P<bare>[^\s<>()",;:\\]+)'
    r'|(?:"(?P<quoted>[^"\\]*)"|(?P<name>[^<>()",;:\\@]*?))\s*<(?P<addr>[^\s<>()",;:\\]+)>)\s*$'
)

# The cheap check for bulk lists, as one pattern for pydantic's native regex engine (no Python call
# per address): a narrow ASCII addr-spec (dot-atom local part, hostname domain with a dot), bare or
# as `Name <addr>` / `"Name" <addr>` with the same safe display names as above.
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_PATTERN_ADDR: Final = rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*\.[A-Za-z]{{2,63}}"
_PATTERN_UNSAFE: Final = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
BULK_MAILBOX_PATTERN: Final = (
    rf'^(?:{_PATTERN_ADDR}|(?:"[^"\\{_PATTERN_UNSAFE}]*"|[^<>()",;:\\@{_PATTERN_UNSAFE}]*) *<{_PATTERN_ADDR}>)$'
)


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A validated mailbox: an ASCII addr-spec and an optional display name."""

    addr_spec: str
    display_name: str = ""

    @property
    def domain(self) -> str:
        return self.addr_spec.rpartition("@")[2]

    def header_address(self) -> Address:
        """The mailbox as the email library's Address (it quotes and encodes the name itself)."""
        username, _, domain = self.addr_spec.rpartition("@")
        return Address(display_name=self.display_name, username=username, domain=domain)

    def __str__(self) -> str:
        # The stored form; it parses back to the same Mailbox.
        return f'"{self.display_name}" <{self.addr_spec}>' if self.display_name else self.addr_spec


def check_header_text(value: str) -> str:
    """Return `value`; raise ValueError if it holds a line break or control character."""
    if _UNSAFE_HEADER_CHARS.search(value):
        raise ValueError("must not contain CR, LF or other control characters")
    return value


def parse_mailbox(value: str) -> Mailbox:
    """Parse one `addr` / `Name <addr>`. Raises ValueError when it is not exactly one valid mailbox.

    The address goes through email-validator (about 30 µs): fine for a few hundred, too slow for a
    bulk list at the API, which uses BULK_MAILBOX_PATTERN and leaves this to the handler.
    """
    if len(value) > MAX_MAILBOX_CHARS:
        raise ValueError(f"must be at most {MAX_MAILBOX_CHARS} characters")
    check_header_text(value)
    match = _MAILBOX.match(value)
    if match is None:
        raise ValueError("must be one address, as addr@example.com or Name <addr@example.com>")
    addr = match["bare"] or match["addr"]
    name = (match["quoted"] if match["quoted"] is not None else match["name"] or "").strip()
    return Mailbox(addr_spec=_validated_addr(addr), display_name=name)


def _validated_addr(addr: str) -> str:
    # Imported here: machines that never check an address do not pay for email-validator's import.
    from email_validator import EmailNotValidError, validate_email

    try:
        # No SMTPUTF8: local parts stay ASCII, international domains travel as punycode.
        result = validate_email(addr, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(f"is not a valid email address: {exc}") from None
    return str(result.ascii_email)
