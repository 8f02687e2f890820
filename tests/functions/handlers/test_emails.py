"""The emails handler, called directly, against a real aiosmtpd server on loopback and moto S3."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from functions.handlers import emails
from functions.handlers.base import HandlerContext
from functions.handlers.lib.smtp_sender import SmtpConfig, SmtpSender
from infra.local.s3 import LocalS3
from shared.db.models import Job
from shared.errors import PermanentJobError, RetryableJobError
from shared.schemas.emails import BulkEmailRequest, EmailRequest, expand_bulk
from tests.conftest import make_settings
from tests.support.jobs import held_job, run_handler, store_bytes
from tests.support.smtp import SmtpTestServer, TlsFiles, make_tls_files, running_smtp_server

UNUSED_DB = "postgresql://unused.invalid/none"  # handlers never touch the database
TENANT = "tenant-1"


def make_job(args: dict[str, Any], *, job_id: int | None = None, attempt: int = 1, tenant: str = TENANT) -> Job:
    args = json.loads(json.dumps(args))  # as it comes back from jsonb
    return held_job(queue="emails", tenant_id=tenant, args=args, job_id=job_id, attempt=attempt)


def body_text(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    return str(part.get_content()).strip()


def submitted(body: dict[str, Any]) -> dict[str, Any]:
    """What the ingress stores as job.args for this POST /jobs/emails body."""
    return EmailRequest.model_validate_json(json.dumps(body)).function_args()


def context_for(server: SmtpTestServer, s3: LocalS3 | None = None, **overrides: Any) -> HandlerContext:
    settings = make_settings(
        UNUSED_DB, s3, email_from="Shop <shop@example.com>", **{**server.settings_overrides(), **overrides}
    )
    return HandlerContext(settings=settings, machine_id="test-machine")


def trust_the_relay(ctx: HandlerContext, tls: TlsFiles) -> None:
    """The relay's certificate is self-signed: trust exactly it, hostname checks stay on."""
    config = dataclasses.replace(SmtpConfig.from_settings(ctx.settings), tls_context=tls.client_context())
    ctx.resources[emails.SMTP_RESOURCE] = SmtpSender(config)


async def retryable_failure(ctx: HandlerContext) -> RetryableJobError:
    """Send one plain email that must fail for now; the machine's SMTP connection is closed after."""
    try:
        with pytest.raises(RetryableJobError) as caught:
            await run_handler(emails, make_job(submitted({"to": "jane@example.com", "subject": "s", "text": "t"})), ctx)
    finally:
        await emails.close(ctx)
    return caught.value


@pytest.fixture
def smtp_server() -> Iterator[SmtpTestServer]:
    with running_smtp_server() as server:
        yield server


@pytest.fixture
async def ctx(smtp_server: SmtpTestServer) -> AsyncIterator[HandlerContext]:
    context = context_for(smtp_server)
    yield context
    await emails.close(context)


async def test_a_single_email_arrives_with_its_headers_and_both_bodies(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    job = make_job(
        submitted(
            {
                "to": ["Jane Doe <jane@example.com>", "bob@example.com"],
                "cc": "carol@example.com",
                "bcc": "audit@example.com",
                "replyTo": "support@example.com",
                "subject": "Your invoice, Zoë",
                "text": "Plain body",
                "html": "<p>HTML body</p>",
                "headers": {"X-Campaign": "spring"},
            }
        ),
        job_id=123,
    )

    result = await run_handler(emails, job, ctx)

    assert result == {
        "messageId": "<job-123.tenant-1@example.com>",
        "accepted": ["jane@example.com", "bob@example.com", "carol@example.com", "audit@example.com"],
        "rejected": [],
    }
    [received] = smtp_server.messages
    assert received.mail_from == "shop@example.com"
    assert received.rcpt_tos == ["jane@example.com", "bob@example.com", "carol@example.com", "audit@example.com"]
    message = received.parsed()
    assert message["From"] == "Shop <shop@example.com>"
    assert message["To"] == "Jane Doe <jane@example.com>, bob@example.com"
    assert message["Cc"] == "carol@example.com"
    assert message["Reply-To"] == "support@example.com"
    assert message["Bcc"] is None and b"audit@example.com" not in received.data  # only in the envelope
    assert message["Subject"] == "Your invoice, Zoë"
    assert message["Message-ID"] == "<job-123.tenant-1@example.com>"
    assert message["X-Campaign"] == "spring"
    assert message["Date"] is not None
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert body_text(message, "plain") == "Plain body"
    assert body_text(message, "html") == "<p>HTML body</p>"


async def test_attachments_come_from_tenant_storage_byte_for_byte(smtp_server: SmtpTestServer, s3: LocalS3) -> None:
    ctx = context_for(smtp_server, s3)
    ctx.bucket.ensure_bucket()
    pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40 + b"\r\n.\r\n\x00end"  # CRLF-dot and NUL survive base64
    store_bytes(ctx, f"tenants/{TENANT}/uploads/u1/invoice.pdf", pdf, "application/pdf")
    store_bytes(ctx, f"tenants/{TENANT}/jobs/7/report.csv", b"a,b\r\n1,2\r\n", "text/csv")
    job = make_job(
        submitted(
            {
                "to": "jane@example.com",
                "subject": "Files",
                "text": "See attached",
                "attachments": [
                    {"filename": "facture été.pdf", "key": f"tenants/{TENANT}/uploads/u1/invoice.pdf"},
                    {"filename": "report.csv", "key": f"tenants/{TENANT}/jobs/7/report.csv"},
                ],
            }
        )
    )
    try:
        await run_handler(emails, job, ctx)
    finally:
        await emails.close(ctx)

    message = smtp_server.messages[0].parsed()
    assert message.get_content_type() == "multipart/mixed"
    attached = {part.get_filename(): part for part in message.iter_attachments()}
    assert set(attached) == {"facture été.pdf", "report.csv"}
    assert attached["facture été.pdf"].get_content_type() == "application/pdf"
    assert attached["facture été.pdf"].get_content() == pdf
    assert attached["report.csv"].get_content_type() == "text/csv"
    assert attached["report.csv"].get_payload(decode=True) == b"a,b\r\n1,2\r\n"


async def test_an_attachment_key_of_another_tenant_is_refused_before_any_send(
    smtp_server: SmtpTestServer, s3: LocalS3
) -> None:
    ctx = context_for(smtp_server, s3)
    ctx.bucket.ensure_bucket()
    store_bytes(ctx, "tenants/other/uploads/secret.pdf", b"secret", "application/pdf")
    args = submitted({"to": "jane@example.com", "subject": "s", "text": "t"})
    args["attachments"] = [{"filename": "secret.pdf", "key": "tenants/other/uploads/secret.pdf"}]
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(emails, make_job(args), ctx)
    assert caught.value.kind == "forbidden-key"
    assert smtp_server.messages == [] and smtp_server.connections == 0


async def test_a_missing_attachment_fails_the_job_for_good(smtp_server: SmtpTestServer, s3: LocalS3) -> None:
    ctx = context_for(smtp_server, s3)
    ctx.bucket.ensure_bucket()
    args = submitted(
        {
            "to": "jane@example.com",
            "subject": "s",
            "text": "t",
            "attachments": [{"filename": "gone.pdf", "key": f"tenants/{TENANT}/uploads/gone.pdf"}],
        }
    )
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(emails, make_job(args), ctx)
    assert caught.value.kind == "object-not-found"
    assert smtp_server.messages == []


@pytest.mark.parametrize(
    ("address", "reply", "error"),
    [
        ("gone@example.com", "550 5.1.1 no such user", PermanentJobError),
        ("busy@example.com", "451 4.3.0 mailbox busy, try later", RetryableJobError),
    ],
    ids=["5xx-is-permanent", "4xx-is-retryable"],
)
async def test_a_refusal_of_the_only_recipient_fails_the_job(
    ctx: HandlerContext,
    smtp_server: SmtpTestServer,
    address: str,
    reply: str,
    error: type[PermanentJobError | RetryableJobError],
) -> None:
    smtp_server.refuse_recipient(address, reply)
    with pytest.raises(error) as caught:
        await run_handler(emails, make_job(submitted({"to": address, "subject": "s", "text": "t"})), ctx)
    refusal = caught.value
    assert isinstance(refusal, PermanentJobError | RetryableJobError)  # for the type checker: both carry a kind
    assert refusal.kind == "recipients-refused"
    assert reply[:3] in str(refusal)
    assert smtp_server.messages == []


async def test_a_throttled_message_is_retryable_and_a_rejected_one_is_not(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    job = make_job(submitted({"to": "jane@example.com", "subject": "s", "text": "t"}))
    smtp_server.data_reply = "454 4.7.0 Throttling failure: Maximum sending rate exceeded"
    with pytest.raises(RetryableJobError) as retry:
        await run_handler(emails, job, ctx)
    smtp_server.data_reply = "554 5.7.1 Message rejected as spam"
    with pytest.raises(PermanentJobError) as permanent:
        await run_handler(emails, job, ctx)
    assert (retry.value.kind, permanent.value.kind) == ("message-refused", "message-refused")
    smtp_server.data_reply = None
    await run_handler(emails, job, ctx)  # the relay recovered; the same job goes through
    assert len(smtp_server.messages) == 1


async def test_some_recipients_refused_completes_and_reports_each(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    smtp_server.refuse_recipient("gone@example.com", "550 5.1.1 no such user")
    smtp_server.refuse_recipient("busy@example.com", "452 4.2.2 mailbox full")
    args = submitted(
        {"to": ["jane@example.com", "gone@example.com"], "cc": "busy@example.com", "subject": "s", "text": "t"}
    )

    result = await run_handler(emails, make_job(args), ctx)

    assert result["accepted"] == ["jane@example.com"]
    assert result["rejected"] == [
        {"address": "gone@example.com", "code": 550, "message": "5.1.1 no such user"},
        {"address": "busy@example.com", "code": 452, "message": "4.2.2 mailbox full"},
    ]
    assert [m.rcpt_tos for m in smtp_server.messages] == [["jane@example.com"]]


async def test_one_connection_serves_the_machines_jobs_and_a_dropped_one_is_replaced(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    for to in ("a@example.com", "b@example.com"):
        await run_handler(emails, make_job(submitted({"to": to, "subject": "s", "text": "t"})), ctx)
    assert smtp_server.connections == 1
    assert [m.connection for m in smtp_server.messages] == [1, 1]

    smtp_server.drop_connections()  # the relay's idle timeout
    await run_handler(emails, make_job(submitted({"to": "c@example.com", "subject": "s", "text": "t"})), ctx)

    assert smtp_server.connections == 2
    assert [m.connection for m in smtp_server.messages] == [1, 1, 2]


async def test_every_attempt_of_a_job_carries_the_same_message_id(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    args = submitted({"to": "jane@example.com", "subject": "s", "text": "t"})
    first = await run_handler(emails, make_job(args, job_id=77, attempt=1), ctx)
    second = await run_handler(emails, make_job(args, job_id=77, attempt=2), ctx)
    ids = [m.parsed()["Message-ID"] for m in smtp_server.messages]
    assert ids == ["<job-77.tenant-1@example.com>"] * 2 == [first["messageId"], second["messageId"]]


async def test_bulk_recipients_get_their_own_rendered_message_and_unsubscribe_link(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    request = BulkEmailRequest.model_validate_json(
        json.dumps(
            {
                "from": "News <news@example.com>",
                "subject": "Hello {{ name }}",
                "text": "Hi {{ name }}, your code is {{ code }}.",
                "html": "<p>Hi {{ name }}</p>",
                "unsubscribeUrl": "https://example.com/unsubscribe?list=news",
                "recipients": [
                    {"to": "Ann <ann@example.com>", "data": {"name": "Ann", "code": "A1"}},
                    {"to": "bob+tag@example.com", "data": {"name": "<script>alert(1)</script>", "code": "B2"}},
                    {"to": "cy@example.com", "data": {"name": "Cy & Co", "code": "C3"}},
                ],
            }
        )
    )
    jobs = [make_job(args, job_id=500 + i) for i, args in enumerate(expand_bulk(request))]

    results = [await run_handler(emails, job, ctx) for job in jobs]

    assert [r["accepted"] for r in results] == [["ann@example.com"], ["bob+tag@example.com"], ["cy@example.com"]]
    messages = [m.parsed() for m in smtp_server.messages]
    assert [m["To"] for m in messages] == ["Ann <ann@example.com>", "bob+tag@example.com", "cy@example.com"]
    assert [m["From"] for m in messages] == ["News <news@example.com>"] * 3
    assert [m["Subject"] for m in messages] == ["Hello Ann", "Hello <script>alert(1)</script>", "Hello Cy & Co"]
    assert [m["Message-ID"] for m in messages] == [f"<job-{500 + i}.tenant-1@example.com>" for i in range(3)]
    htmls = [body_text(m, "html") for m in messages]
    assert htmls == ["<p>Hi Ann</p>", "<p>Hi &lt;script&gt;alert(1)&lt;/script&gt;</p>", "<p>Hi Cy &amp; Co</p>"]
    assert body_text(messages[1], "plain") == "Hi <script>alert(1)</script>, your code is B2."
    assert [m["List-Unsubscribe"] for m in messages] == [
        "<https://example.com/unsubscribe?list=news&email=ann%40example.com>",
        "<https://example.com/unsubscribe?list=news&email=bob%2Btag%40example.com>",
        "<https://example.com/unsubscribe?list=news&email=cy%40example.com>",
    ]
    assert [m["List-Unsubscribe-Post"] for m in messages] == ["List-Unsubscribe=One-Click"] * 3


async def test_a_bulk_unsubscribe_template_carries_the_recipients_token(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    request = BulkEmailRequest.model_validate(
        {
            "subject": "News",
            "text": "t",
            "unsubscribeUrl": "https://example.com/u/{{ token }}",
            "recipients": [{"to": "ann@example.com", "data": {"token": "a/b c&d"}}],
        }
    )
    await run_handler(emails, make_job(expand_bulk(request)[0]), ctx)
    message = smtp_server.messages[0].parsed()
    assert message["List-Unsubscribe"] == "<https://example.com/u/a%2Fb%20c%26d>"
    assert message["From"] == "Shop <shop@example.com>"  # EMAIL_FROM when the request names none


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"name": "Ann\r\nBcc: victim@example.com"}, "invalid-header"),  # rendered subject with a line break
        ({}, "template-error"),  # a variable the template needs is missing
    ],
)
async def test_a_bulk_recipient_whose_data_breaks_the_message_fails_alone(
    ctx: HandlerContext, smtp_server: SmtpTestServer, data: dict[str, Any], kind: str
) -> None:
    request = BulkEmailRequest.model_validate(
        {"subject": "Hello {{ name }}", "text": "t", "recipients": [{"to": "ann@example.com", "data": data}]}
    )
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(emails, make_job(expand_bulk(request)[0]), ctx)
    assert caught.value.kind == kind
    assert smtp_server.messages == []


async def test_a_bulk_address_that_only_passed_the_cheap_check_is_refused_before_sending(
    ctx: HandlerContext, smtp_server: SmtpTestServer
) -> None:
    # .test is a special-use domain: the API's pattern lets it through, email-validator does not.
    request = BulkEmailRequest.model_validate({"subject": "s", "text": "t", "recipients": [{"to": "ann@mail.test"}]})
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(emails, make_job(expand_bulk(request)[0]), ctx)
    assert caught.value.kind == "invalid-address"
    assert smtp_server.connections == 0


async def test_args_that_bypass_the_api_are_validated_again(ctx: HandlerContext, smtp_server: SmtpTestServer) -> None:
    args = {"to": ["jane@example.com"], "subject": "Hi\r\nBcc: victim@example.com", "text": "t"}
    with pytest.raises(PermanentJobError) as caught:
        await run_handler(emails, make_job(args), ctx)
    assert caught.value.kind == "invalid-args"
    assert smtp_server.connections == 0


async def test_starttls_and_auth_against_a_self_signed_relay(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    with running_smtp_server(tls=tls, credentials=("mailer", "s3cret")) as server:
        ctx = context_for(server)
        assert ctx.settings.smtp_starttls and ctx.settings.smtp_user == "mailer"
        trust_the_relay(ctx, tls)
        try:
            await run_handler(
                emails, make_job(submitted({"to": "jane@example.com", "subject": "Secure", "text": "t"})), ctx
            )
        finally:
            await emails.close(ctx)
    [received] = server.messages
    assert received.tls and received.login == "mailer"
    assert received.parsed()["Subject"] == "Secure"


async def test_a_relay_certificate_that_is_not_trusted_is_a_retryable_failure(tmp_path: Path) -> None:
    with running_smtp_server(tls=make_tls_files(tmp_path), credentials=("mailer", "s3cret")) as server:
        error = await retryable_failure(context_for(server))  # the system CAs do not know the self-signed certificate
    assert error.kind == "smtp-tls-failed"
    assert server.messages == []


async def test_wrong_credentials_are_retryable(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    with running_smtp_server(tls=tls, credentials=("mailer", "s3cret")) as server:
        ctx = context_for(server, smtp_password="wrong")
        trust_the_relay(ctx, tls)
        error = await retryable_failure(ctx)
    assert error.kind == "smtp-auth-failed"
    assert server.messages == []


async def test_starttls_required_but_not_offered_never_sends_in_plaintext(smtp_server: SmtpTestServer) -> None:
    error = await retryable_failure(context_for(smtp_server, smtp_starttls=True))  # this server offers no STARTTLS
    assert error.kind == "smtp-tls-unavailable"
    assert smtp_server.messages == []


async def test_an_unreachable_relay_is_retryable() -> None:
    with running_smtp_server() as stopped:
        ctx = context_for(stopped)
    # The server is gone: nothing listens on its port any more.
    error = await retryable_failure(ctx)
    assert error.kind == "smtp-unavailable"


async def test_close_quits_the_machines_connection(ctx: HandlerContext, smtp_server: SmtpTestServer) -> None:
    await run_handler(emails, make_job(submitted({"to": "jane@example.com", "subject": "s", "text": "t"})), ctx)
    assert smtp_server.quits == 0
    await emails.close(ctx)
    assert smtp_server.quits == 1
    assert emails.SMTP_RESOURCE not in ctx.resources


def test_backoff_waits_minutes_not_seconds() -> None:
    waits = [emails.backoff(attempt) for attempt in (1, 2, 3, 4, 5, 9)]
    assert 54 <= waits[0] <= 66
    assert 216 <= waits[1] <= 264
    assert all(later >= earlier * 0.8 for earlier, later in itertools.pairwise(waits))
    assert waits[-1] <= 3600 * 1.1
