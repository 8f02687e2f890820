"""Build the MIME message of one email; header text is encoded by the email library, never spliced.

Header values were refused at the API if they held a control character; `build_message` checks
again (bulk subjects are rendered per recipient, after the API saw them) and raises UnsafeHeader.

Encoded headers (Subject, addresses, extra headers) are produced with `email.header.Header` and
`email.utils.formataddr` and stored with `set_raw`, not by assigning to the message: on this
Python (3.11.7) the policy's folder drops the space between words when it splits non-ASCII text
into several encoded words ("wörld naïve" arrives as "wörldnaïve"). The legacy encoder folds
correctly; `_set_encoded` checks its output (every continuation line starts with a space, no line
over 998 characters) before the header is stored. List-Unsubscribe is stored the same way because
the policy would RFC 2047-encode a long URL, which mail clients do not decode there.

Text and HTML become multipart/alternative (text first, so clients prefer the HTML); attachments
wrap that in multipart/mixed. Bodies are 7-bit (quoted-printable or base64 when needed), so no
relay has to support 8BITMIME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Final

from shared.schemas.email_address import Mailbox, check_header_text

# refold_source="none" leaves headers stored with set_raw() exactly as encoded here; headers set
# the normal way (Date, Message-ID, MIME headers) are folded by the policy.
_POLICY: Final = policy.SMTP.clone(cte_type="7bit", refold_source="none")
_MAX_LINE_CHARS: Final = 998
_CRLF: Final = "\r\n"
_URL_CHARS: Final = re.compile(r"^https://[\x21-\x7e]+$")
MAX_UNSUBSCRIBE_URL_CHARS: Final = 900  # "List-Unsubscribe: <url>" must fit one 998-character line
_MESSAGE_ID_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]+")


class UnsafeHeader(ValueError):
    """A header value would break the message (a line break, or a malformed unsubscribe URL)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentFile:
    filename: str
    content: bytes
    content_type: str  # "maintype/subtype"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingEmail:
    """Everything one message needs, already validated and rendered."""

    sender: Mailbox
    to: list[Mailbox]
    subject: str
    message_id: str
    text: str | None = None
    html: str | None = None
    cc: list[Mailbox] = field(default_factory=list)
    bcc: list[Mailbox] = field(default_factory=list)
    reply_to: list[Mailbox] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    attachments: list[AttachmentFile] = field(default_factory=list)
    unsubscribe_url: str | None = None

    def envelope_recipients(self) -> list[str]:
        """To, Cc and Bcc addresses, each once (Bcc never appears in a header)."""
        seen: dict[str, str] = {}
        for mailbox in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(mailbox.addr_spec.lower(), mailbox.addr_spec)
        return list(seen.values())


def message_id_for(*, job_id: int, tenant_id: str, domain: str) -> str:
    """A Message-ID that is the same on every attempt of a job, so receivers can drop duplicates."""
    tenant = _MESSAGE_ID_UNSAFE.sub("-", tenant_id).strip("-") or "tenant"
    return f"<job-{job_id}.{tenant}@{domain}>"


def build_message(email: OutgoingEmail, *, now: datetime) -> bytes:
    """The message as SMTP DATA bytes (CRLF line ends). Raises UnsafeHeader for a bad header value."""
    msg = EmailMessage(policy=_POLICY)
    _set_encoded(msg, "From", _address_list([email.sender]))
    _set_encoded(msg, "To", _address_list(email.to))
    if email.cc:
        _set_encoded(msg, "Cc", _address_list(email.cc))
    if email.reply_to:
        _set_encoded(msg, "Reply-To", _address_list(email.reply_to))
    _set_encoded(msg, "Subject", _unstructured("Subject", email.subject))
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = email.message_id
    for name, value in email.headers.items():
        _set_encoded(msg, name, _unstructured(name, value))
    if email.unsubscribe_url is not None:
        _set_one_click_unsubscribe(msg, email.unsubscribe_url)
    _set_bodies(msg, email)
    for attachment in email.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return msg.as_bytes()


def _unstructured(name: str, value: str) -> str:
    try:
        check_header_text(value)
    except ValueError as exc:
        raise UnsafeHeader(f"{name} {exc}") from None
    # ASCII text is only folded at spaces; anything else (or text that looks like an encoded
    # word, which a client would decode) becomes UTF-8 encoded words.
    charset = "us-ascii" if value.isascii() and "=?" not in value else "utf-8"
    # A first word too long for the first line makes Header start with a bare fold; drop it.
    return Header(value, charset, header_name=name).encode(linesep=_CRLF).removeprefix(_CRLF + " ")


def _address_list(mailboxes: list[Mailbox]) -> str:
    return f",{_CRLF} ".join(_address(m) for m in mailboxes)


def _address(mailbox: Mailbox) -> str:
    name, addr = mailbox.display_name, mailbox.addr_spec
    try:
        check_header_text(name)
    except ValueError as exc:
        raise UnsafeHeader(f"a display name {exc}") from None
    if not name:
        return addr
    if name.isascii() and "=?" not in name:
        return formataddr((name, addr))  # quotes the name when it holds specials
    encoded_name = Header(name, "utf-8").encode(linesep=_CRLF)
    return f"{encoded_name} <{addr}>"


def _set_encoded(msg: EmailMessage, name: str, value: str) -> None:
    # set_raw skips the policy's own checks, so the encoded value is checked here: ASCII only,
    # line breaks only as CRLF folds followed by a space (the generator re-splits on
    # str.splitlines(), hence the comparison), and every line within the RFC 5322 limit.
    lines = value.split(_CRLF)
    if (
        not value.isascii()
        or value.splitlines() != lines
        or any(not line.startswith(" ") for line in lines[1:])
        or any(len(line) + len(name) + 2 > _MAX_LINE_CHARS for line in lines)
    ):
        raise UnsafeHeader(f"{name} cannot be written as a header")
    msg.set_raw(name, value)


def _set_one_click_unsubscribe(msg: EmailMessage, url: str) -> None:
    # RFC 8058: an https URI that unsubscribes on a cookieless POST of List-Unsubscribe=One-Click.
    if len(url) > MAX_UNSUBSCRIBE_URL_CHARS or not _URL_CHARS.fullmatch(url) or "<" in url or ">" in url:
        raise UnsafeHeader("the unsubscribe URL must be an https URL of visible ASCII characters, at most 900")
    _set_encoded(msg, "List-Unsubscribe", f"<{url}>")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"


def _set_bodies(msg: EmailMessage, email: OutgoingEmail) -> None:
    if email.text is not None:
        msg.set_content(email.text)
        if email.html is not None:
            msg.add_alternative(email.html, subtype="html")
    elif email.html is not None:
        msg.set_content(email.html, subtype="html")
    else:
        raise ValueError("an email needs a text or an html body")
