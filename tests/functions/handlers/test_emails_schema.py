"""POST /jobs/emails and /jobs/emails/bulk bodies: what is a 422, what is stored, how bulk fans out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas.email_address import parse_mailbox
from shared.schemas.emails import BulkEmailArgs, BulkEmailRequest, EmailRequest, expand_bulk
from tests.conftest import make_settings

SETTINGS = make_settings("postgresql://unused.invalid/none")
BASE: dict[str, Any] = {"to": "jane@example.com", "subject": "Hello", "text": "Hi"}


def validate(body: dict[str, Any]) -> EmailRequest:
    # Exactly how the ingress validates a POST body.
    return EmailRequest.model_validate_json(json.dumps(body), context={"settings": SETTINGS})


def validate_bulk(body: dict[str, Any]) -> BulkEmailRequest:
    return BulkEmailRequest.model_validate_json(json.dumps(body), context={"settings": SETTINGS})


def error_paths(exc: ValidationError) -> list[str]:
    return [".".join(str(part) for part in error["loc"]) for error in exc.errors()]


@pytest.mark.parametrize(
    "subject",
    [
        "Hello\r\nBcc: victim@example.com",
        "Hello\nBcc: victim@example.com",
        "Hello\r",
        "Hello\r\n",  # trailing: refused, not stripped away
        "Hello\x00",
        "Hello\x0bworld",
        "Hello\x85world",  # NEL
        "Hello\u2028world",  # line separator: str.splitlines() breaks on it
    ],
)
def test_a_line_break_or_control_character_in_the_subject_is_a_validation_error(subject: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate({**BASE, "subject": subject})
    assert error_paths(caught.value) == ["subject"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("to", "a@example.com, b@example.com"),  # two recipients in one
        ("to", "a@example.com; b@example.com"),
        ("to", "Jane <a@example.com>, b@example.com"),
        ("to", "undisclosed-recipients:;"),
        ("to", "a@example.com\r\nBcc: victim@example.com"),
        ("to", "Jane\n <a@example.com>"),
        ("to", "not an address"),
        ("to", "a@example"),  # no dot in the domain
        ("to", "a@localhost"),
        ("to", "a@[127.0.0.1]"),  # domain literals are refused
        ("to", "jäne@example.com"),  # non-ASCII local parts need SMTPUTF8, which we do not use
        ("cc", "<a@example.com> (comment)"),
        ("bcc", ["ok@example.com", "bad@@example.com"]),
        ("from", "Shop <shop@example.com>>"),
        ("replyTo", '"Unclosed <a@example.com>'),
    ],
)
def test_an_address_field_holds_exactly_one_valid_mailbox(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        validate({**BASE, field: value})
    assert error_paths(caught.value)[0].startswith(field)


def test_addresses_are_normalised_and_one_address_becomes_a_list() -> None:
    request = validate(
        {
            **BASE,
            "to": "  Jane Doe   <Jane@Example.COM> ",
            "cc": ['"Doe, John" <john@example.com>', "zoë <z@exämple.com>"],
            "from": "Shop <shop@example.com>",
        }
    )
    args = request.function_args()
    assert args["to"] == ['"Jane Doe" <Jane@example.com>']
    assert args["cc"] == ['"Doe, John" <john@example.com>', '"zoë" <z@xn--exmple-cua.com>']
    assert args["from"] == '"Shop" <shop@example.com>'
    # The stored form parses back to the same mailbox.
    assert parse_mailbox(args["cc"][0]).display_name == "Doe, John"
    assert str(parse_mailbox(args["cc"][1])) == args["cc"][1]


def test_the_stored_args_are_camel_case_without_tenant_or_options() -> None:
    request = validate(
        {
            **BASE,
            "tenantId": "tenant-1",
            "options": {"priority": 3},
            "replyTo": "help@example.com",
            "html": "<p>Hi</p>",
            "attachments": [{"filename": "a.pdf", "key": "tenants/tenant-1/uploads/a.pdf"}],
        }
    )
    assert request.function_args() == {
        "to": ["jane@example.com"],
        "replyTo": ["help@example.com"],
        "subject": "Hello",
        "html": "<p>Hi</p>",
        "text": "Hi",
        "headers": {},
        "attachments": [{"filename": "a.pdf", "key": "tenants/tenant-1/uploads/a.pdf"}],
    }


def test_at_most_fifty_recipients_per_field() -> None:
    validate({**BASE, "to": [f"u{i}@example.com" for i in range(50)]})
    with pytest.raises(ValidationError) as caught:
        validate({**BASE, "to": [f"u{i}@example.com" for i in range(51)]})
    assert error_paths(caught.value) == ["to"]
    with pytest.raises(ValidationError):
        validate({**BASE, "to": []})


def test_html_or_text_is_required() -> None:
    validate({"to": "a@example.com", "subject": "s", "html": "<p>x</p>"})
    with pytest.raises(ValidationError, match="give html, text or both"):
        validate({"to": "a@example.com", "subject": "s"})


@pytest.mark.parametrize("name", ["X-Campaign", "x-priority-hint", "In-Reply-To", "References", "List-Id"])
def test_safe_extra_headers_are_accepted(name: str) -> None:
    assert validate({**BASE, "headers": {name: "<abc@example.com>"}}).headers == {name: "<abc@example.com>"}


@pytest.mark.parametrize(
    "headers",
    [
        {"From": "boss@example.com"},
        {"bcc": "victim@example.com"},
        {"Subject": "x"},
        {"Content-Type": "text/html"},
        {"Message-ID": "<x@y>"},
        {"List-Unsubscribe": "<https://evil.example>"},
        {"Return-Path": "x@y.com"},
        {"X-Bad Name": "v"},
        {"X-": "v"},
        {"X-Campaign": "a\r\nBcc: victim@example.com"},
        {"X-Campaign": "a", "x-campaign": "b"},
        {f"X-H{i}": "v" for i in range(21)},
    ],
)
def test_unsafe_or_too_many_extra_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as caught:
        validate({**BASE, "headers": headers})
    assert error_paths(caught.value)[0].startswith("headers")


@pytest.mark.parametrize(
    "attachment",
    [
        {"filename": "../etc/passwd", "key": "tenants/t/uploads/a"},
        {"filename": "a\r\n.pdf", "key": "tenants/t/uploads/a"},
        {"filename": "", "key": "tenants/t/uploads/a"},
        {"filename": "a.pdf", "key": "uploads/a"},
        {"filename": "a.pdf", "key": "tenants/t/../other/a"},
        {"filename": "a.pdf", "key": "tenants/t//a"},
        {"filename": "a.pdf", "key": "tenants/t/uploads/a", "contentType": "x/y"},
    ],
)
def test_attachments_need_a_plain_filename_and_a_tenant_key(attachment: dict[str, str]) -> None:
    with pytest.raises(ValidationError) as caught:
        validate({**BASE, "attachments": [attachment]})
    assert error_paths(caught.value)[0].startswith("attachments")


def test_attachments_are_capped_and_must_be_the_tenants_own() -> None:
    eleven = [{"filename": f"{i}.pdf", "key": f"tenants/t/uploads/{i}.pdf"} for i in range(11)]
    with pytest.raises(ValidationError):
        validate({**BASE, "attachments": eleven})
    with pytest.raises(ValidationError, match="outside this tenant's storage"):
        validate({**BASE, "tenantId": "t", "attachments": [{"filename": "a", "key": "tenants/other/uploads/a"}]})


def test_the_openapi_schema_shows_one_address_or_a_list() -> None:
    schema = EmailRequest.model_json_schema()
    to = schema["properties"]["to"]
    assert [option["type"] for option in to["anyOf"]] == ["string", "array"]
    assert to["anyOf"][1]["maxItems"] == 50
    assert "from" in schema["properties"] and "from_" not in schema["properties"]


BULK: dict[str, Any] = {
    "from": "News <news@example.com>",
    "subject": "Hello {{ name }}",
    "html": "<p>Hi {{ name }}</p>",
    "text": "Hi {{ name }}",
    "unsubscribeUrl": "https://example.com/unsubscribe",
    "recipients": [
        {"to": "ann@example.com", "data": {"name": "Ann"}},
        {"to": "Bob Smith <bob@example.com>", "data": {"name": "Bob"}},
        {"to": '"Doe, Cy" <cy@example.com>'},
    ],
}


def test_expand_bulk_makes_one_job_args_per_recipient_sharing_the_template() -> None:
    items = expand_bulk(validate_bulk(BULK))
    template = {
        "subject": "Hello {{ name }}",
        "html": "<p>Hi {{ name }}</p>",
        "text": "Hi {{ name }}",
        "from": '"News" <news@example.com>',
        "unsubscribeUrl": "https://example.com/unsubscribe",
    }
    assert items == [
        {"kind": "bulk", "to": "ann@example.com", "data": {"name": "Ann"}, "template": template},
        {"kind": "bulk", "to": "Bob Smith <bob@example.com>", "data": {"name": "Bob"}, "template": template},
        {"kind": "bulk", "to": '"Doe, Cy" <cy@example.com>', "data": {}, "template": template},
    ]
    # Each is what the handler accepts (after the jsonb round trip), and never a single email.
    for item in items:
        BulkEmailArgs.model_validate(json.loads(json.dumps(item)))
        with pytest.raises(ValidationError):
            EmailRequest.model_validate(item)


def test_ten_thousand_recipients_validate_and_expand() -> None:
    body = {**BULK, "recipients": [{"to": f"user{i}@example.com", "data": {"i": i}} for i in range(10_000)]}
    items = expand_bulk(validate_bulk(body))
    assert len(items) == 10_000 and items[-1]["to"] == "user9999@example.com" and items[-1]["data"] == {"i": 9999}
    with pytest.raises(ValidationError) as caught:
        validate_bulk({**body, "recipients": body["recipients"] + [{"to": "one-more@example.com"}]})
    assert error_paths(caught.value) == ["recipients"]


@pytest.mark.parametrize(
    "to",
    [
        "a@example.com, b@example.com",
        "a@example.com;b@example.com",
        "a@example.com\r\nBcc: victim@example.com",
        "Ann\u2028 <a@example.com>",
        "Ann <a@example.com> <b@example.com>",
        "a@example",
        "a b@example.com",
        "",
    ],
)
def test_a_bulk_recipient_is_one_address_too(to: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_bulk({**BULK, "recipients": [{"to": to}]})
    assert error_paths(caught.value)[0].startswith("recipients.0.to")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Hello {{ name "),
        ("html", "{% for x in items %}"),
        ("text", "{{ }}"),
        ("subject", "Hello\r\nBcc: x@example.com"),
        ("unsubscribeUrl", "http://example.com/u"),
        ("unsubscribeUrl", "https://example.com/u?a=<b>"),
        ("unsubscribeUrl", "https://example.com/u?x={{ token"),
        ("unsubscribeUrl", "https://example.com/u\r\n"),
    ],
)
def test_bad_bulk_templates_are_a_validation_error(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_bulk({**BULK, field: value})
    assert error_paths(caught.value)[0] == field


def test_a_bulk_body_needs_recipients_and_a_body() -> None:
    with pytest.raises(ValidationError):
        validate_bulk({**BULK, "recipients": []})
    with pytest.raises(ValidationError, match="give html, text or both"):
        validate_bulk({key: value for key, value in BULK.items() if key not in {"html", "text"}})
    with pytest.raises(ValidationError):
        validate_bulk({**BULK, "recipients": [{"to": "a@example.com", "extra": 1}]})


@pytest.mark.parametrize("field", ["html", "text"])
def test_nul_characters_are_refused_in_bodies_and_templates(field: str) -> None:
    # Postgres JSONB cannot store U+0000: refusing it here keeps it a 422 instead of a failed insert.
    with pytest.raises(ValidationError) as caught:
        validate({**BASE, field: "a\u0000b"})
    assert error_paths(caught.value) == [field]
    with pytest.raises(ValidationError) as caught_bulk:
        validate_bulk({**BULK, field: "a\u0000b"})
    assert error_paths(caught_bulk.value) == [field]
