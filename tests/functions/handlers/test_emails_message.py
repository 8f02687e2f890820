"""The MIME builder (functions/handlers/lib/email_message.py): headers, structure, injection-proofing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

import pytest

from functions.handlers.lib.email_message import (
    AttachmentFile,
    OutgoingEmail,
    UnsafeHeader,
    build_message,
    message_id_for,
)
from shared.schemas.email_address import Mailbox, parse_mailbox
from shared.schemas.emails import MAX_HEADER_CHARS, EmailRequest

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def email(**overrides: Any) -> OutgoingEmail:
    values: dict[str, Any] = {
        "sender": parse_mailbox("Shop <shop@example.com>"),
        "to": [parse_mailbox("jane@example.com")],
        "subject": "Hello",
        "message_id": "<job-1.t@example.com>",
        "text": "Hi",
    }
    return OutgoingEmail(**{**values, **overrides})


def parsed(data: bytes) -> EmailMessage:
    message = message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def display_names(data: bytes, header: str) -> list[str]:
    """Display names decoded as RFC 2047 says: whitespace between adjacent encoded words is dropped.

    (policy.default's address parser on this Python inserts a space there instead, so it is not used.)
    """
    raw = message_from_bytes(data, policy=policy.compat32)[header]
    return [str(make_header(decode_header(name))) for name, _ in getaddresses([str(raw)])]


def header_block(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_headers_and_crlf_line_ends() -> None:
    data = build_message(email(cc=[parse_mailbox("c@example.com")], bcc=[parse_mailbox("b@example.com")]), now=NOW)
    assert b"\n" not in data.replace(b"\r\n", b"")
    message = parsed(data)
    assert message["From"] == "Shop <shop@example.com>"
    assert message["To"] == "jane@example.com"
    assert message["Cc"] == "c@example.com"
    assert message["Bcc"] is None
    assert message["Date"] == "Wed, 04 Mar 2026 05:06:07 +0000"
    assert message["Message-ID"] == "<job-1.t@example.com>"
    assert message["MIME-Version"] == "1.0"
    assert message.get_content_type() == "text/plain"


def test_envelope_recipients_include_bcc_once_each() -> None:
    outgoing = email(
        to=[parse_mailbox("a@example.com"), parse_mailbox("B@example.com")],
        cc=[parse_mailbox("b@example.com")],
        bcc=[parse_mailbox("hidden@example.com"), parse_mailbox("a@example.com")],
    )
    assert outgoing.envelope_recipients() == ["a@example.com", "B@example.com", "hidden@example.com"]


def test_long_non_ascii_subjects_and_names_keep_every_space() -> None:
    # The policy's own folder drops the space between encoded words on this Python version.
    rng = random.Random(7)
    words = ["Héllo", "wörld", "naïve", "日本語", "テキスト", "plain", "€100", "x" * 40, "(note)", "=?utf-8?q?x?="]
    for _ in range(200):
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        name = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        data = build_message(email(subject=subject, to=[Mailbox("jane@example.com", name)]), now=NOW)
        message = parsed(data)
        assert message["Subject"] == subject
        assert display_names(data, "To") == [name]
        assert all(len(line) <= 998 for line in data.split(b"\r\n"))


def test_display_names_with_specials_are_quoted_not_split() -> None:
    to = [parse_mailbox('"Doe, Jane" <jane@example.com>'), parse_mailbox('"a@b.com" <real@example.com>')]
    message = parsed(build_message(email(to=to), now=NOW))
    addresses = message["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [
        ("Doe, Jane", "jane@example.com"),
        ("a@b.com", "real@example.com"),
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nX-Evil: 1"},
        {"subject": "Hi\x0bthere"},
        {"subject": "Hi\u2028there"},
        {"headers": {"X-Campaign": "a\r\nBcc: victim@example.com"}},
        {"to": [Mailbox("jane@example.com", "Jane\r\nBcc: victim@example.com")]},
        {"unsubscribe_url": "https://example.com/u\r\nBcc: victim@example.com"},
        {"unsubscribe_url": "https://example.com/u x"},
        {"unsubscribe_url": "http://example.com/u"},
        {"unsubscribe_url": "https://example.com/<u>"},
        {"unsubscribe_url": "https://example.com/" + "u" * 900},
    ],
)
def test_a_value_that_would_add_or_break_a_header_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(UnsafeHeader):
        build_message(email(**overrides), now=NOW)


def test_one_click_unsubscribe_headers_are_written_verbatim() -> None:
    url = "https://example.com/unsubscribe?list=news&token=" + "a1" * 120 + "&email=jane%40example.com"
    data = build_message(email(unsubscribe_url=url), now=NOW)
    assert f"List-Unsubscribe: <{url}>".encode() in header_block(data)  # one line, not RFC 2047-encoded
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in header_block(data)


def test_extra_headers_are_added() -> None:
    message = parsed(build_message(email(headers={"X-Campaign": "spring", "In-Reply-To": "<a@b.c>"}), now=NOW))
    assert (message["X-Campaign"], message["In-Reply-To"]) == ("spring", "<a@b.c>")


def test_html_only_text_only_and_alternative_bodies() -> None:
    html_only = parsed(build_message(email(text=None, html="<p>é</p>"), now=NOW))
    assert html_only.get_content_type() == "text/html"
    assert html_only.get_content().strip() == "<p>é</p>"
    both = parsed(build_message(email(text="plain é", html="<p>rich</p>"), now=NOW))
    assert both.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in both.iter_parts()] == ["text/plain", "text/html"]


def test_bodies_are_seven_bit_whatever_they_hold() -> None:
    data = build_message(email(text="naïve " * 200 + "\n" + "y" * 2000, html="<p>日本語</p>"), now=NOW)
    assert data.isascii()
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert parsed(data).get_body(("plain",)) is not None


def test_attachments_wrap_the_bodies_in_multipart_mixed() -> None:
    blob = bytes(range(256)) * 10
    message = parsed(
        build_message(
            email(
                html="<p>x</p>",
                attachments=[AttachmentFile(filename="données.bin", content=blob, content_type="application/pdf")],
            ),
            now=NOW,
        )
    )
    assert message.get_content_type() == "multipart/mixed"
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "données.bin"
    assert attachment.get_content() == blob


@pytest.mark.parametrize(
    ("tenant", "expected"),
    [
        ("tenant-1", "<job-42.tenant-1@example.com>"),
        ("acme.eu", "<job-42.acme-eu@example.com>"),
        ("..", "<job-42.tenant@example.com>"),
        ("a..b_c", "<job-42.a-b_c@example.com>"),
    ],
)
def test_message_ids_are_stable_and_well_formed(tenant: str, expected: str) -> None:
    assert message_id_for(job_id=42, tenant_id=tenant, domain="example.com") == expected
    message = parsed(build_message(email(message_id=expected), now=NOW))
    assert message["Message-ID"] == expected


def test_the_longest_values_the_api_accepts_fit_on_one_line() -> None:
    subject, value, name = "s" * MAX_HEADER_CHARS, "v" * MAX_HEADER_CHARS, "X-" + "n" * 62
    request = EmailRequest.model_validate(
        {"to": "a@example.com", "subject": subject, "text": "t", "headers": {name: value}}
    )
    data = build_message(email(subject=request.subject, headers=request.headers), now=NOW)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    message = parsed(data)
    assert (message["Subject"], message[name]) == (subject, value)
