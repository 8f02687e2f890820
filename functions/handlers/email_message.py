"""Build the MIME message of one email: headers set through the email library, never concatenated.

Every header goes through `email.policy.SMTP`, which refuses CR/LF and encodes non-ASCII text, and
every value was already refused at the API if it held a control character; `build_message` checks
again because bulk subjects are rendered per recipient, after the API saw them. The one exception
to "through the policy" is List-Unsubscribe: the policy would RFC 2047-encode a long URL, which
mail clients do not decode there, so it is written as it is after a strict check of its characters.

Text and HTML become multipart/alternative (text first, so clients prefer the HTML); attachments
wrap that in multipart/mixed. Bodies are 7-bit (quoted-printable or base64 when needed), so no
relay has to support 8BITMIME.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Final

from shared.schemas.email_address import Mailbox, check_header_text

# refold_source="none" leaves headers set with set_raw() exactly as written (List-Unsubscribe);
# headers set the normal way are always folded and encoded by the policy.
_POLICY: Final = policy.SMTP.clone(cte_type="7bit", refold_source="none")
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
    try:
        msg["From"] = email.sender.header_address()
        msg["To"] = [m.header_address() for m in email.to]
        if email.cc:
            msg["Cc"] = [m.header_address() for m in email.cc]
        if email.reply_to:
            msg["Reply-To"] = [m.header_address() for m in email.reply_to]
        msg["Subject"] = check_header_text(email.subject)
        msg["Date"] = format_datetime(now)
        msg["Message-ID"] = email.message_id
        for name, value in email.headers.items():
            msg[name] = check_header_text(value)
    except ValueError as exc:
        raise UnsafeHeader(str(exc)) from None
    if email.unsubscribe_url is not None:
        _set_one_click_unsubscribe(msg, email.unsubscribe_url)
    _set_bodies(msg, email)
    for attachment in email.attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        msg.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return msg.as_bytes()


def _set_one_click_unsubscribe(msg: EmailMessage, url: str) -> None:
    # RFC 8058: an https URI that unsubscribes on a cookieless POST of List-Unsubscribe=One-Click.
    if len(url) > MAX_UNSUBSCRIBE_URL_CHARS or not _URL_CHARS.match(url) or "<" in url or ">" in url:
        raise UnsafeHeader("the unsubscribe URL must be an https URL of visible ASCII characters, at most 900")
    msg.set_raw("List-Unsubscribe", f"<{url}>")
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
