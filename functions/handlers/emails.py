"""The emails function: one message per job, sent through the configured SMTP relay.

A job is a single email (the args of `EmailRequest`) or one recipient of a bulk email (the args
`expand_bulk` makes, marked `"kind": "bulk"`), whose templates are rendered here with that
recipient's data. Args are validated again before use: the bulk API checks addresses only
cheaply, and rows are not trusted just because they are in the database.

The Message-ID is derived from the job id, so every attempt sends the same one and receivers
that deduplicate drop a repeat. The SMTP connection lives in `ctx.resources` and serves every
job of the machine (see `smtp_sender`). Result facts: `messageId`, `accepted`, `rejected`.
"""

from __future__ import annotations

import asyncio
import mimetypes
import random
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel

from functions.handlers.base import HandlerContext, HandlerResult, parse_args
from functions.handlers.lib.email_message import (
    AttachmentFile,
    OutgoingEmail,
    UnsafeHeader,
    build_message,
    message_id_for,
)
from functions.handlers.lib.smtp_sender import SmtpConfig, SmtpSender
from shared.db.models import Job
from shared.email_templates import TemplateFailed, has_expressions, render
from shared.errors import PermanentJobError, RetryableJobError
from shared.functions import FunctionSpec
from shared.schemas.email_address import Mailbox, check_header_text, parse_mailbox
from shared.schemas.emails import Attachment, BulkEmailArgs, EmailRequest
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.storage import TenantStorage

SMTP_RESOURCE: Final = "smtp"
_ADDRESS_FIELDS: Final = {"to": "invalid-address", "cc": "invalid-address", "bcc": "invalid-address"}
MAX_ATTACHMENT_BYTES: Final = 10 * 1024 * 1024
MAX_ATTACHMENTS_TOTAL_BYTES: Final = 15 * 1024 * 1024  # about 20 MiB once base64-encoded

FUNCTION: Final = FunctionSpec(
    queue="emails",
    worker="SendEmail",
    summary="Send one email (text and/or HTML, attachments from the tenant's storage)",
    request=EmailRequest,
    limit=10,
    timeout_seconds=30,
    max_attempts=5,
    preload=True,
    rate_key="domain:from",  # one limit per sender domain (default sender: "")
)

ModelT = TypeVar("ModelT", bound=BaseModel)


async def run(job: Job, ctx: HandlerContext) -> HandlerResult:
    """Send the job's email. Raises PermanentJobError / RetryableJobError as `smtp_sender` classifies."""
    email = await _compose(job, ctx)
    try:
        data = await asyncio.to_thread(build_message, email, now=datetime.now(UTC))
    except UnsafeHeader as exc:
        raise PermanentJobError(str(exc), kind="invalid-header") from None
    delivery = await asyncio.to_thread(
        smtp_sender(ctx).send, sender=email.sender.addr_spec, recipients=email.envelope_recipients(), data=data
    )
    ctx.logger.info("email:sent", extra={"accepted": len(delivery.accepted), "rejected": len(delivery.refused)})
    return {
        "messageId": email.message_id,
        "accepted": delivery.accepted,
        "rejected": [{"address": r.address, "code": r.code, "message": r.message} for r in delivery.refused],
    }


async def close(ctx: HandlerContext) -> None:
    """Called when the machine exits: QUIT the idle SMTP connections."""
    sender = ctx.resources.pop(SMTP_RESOURCE, None)
    if isinstance(sender, SmtpSender):
        await asyncio.to_thread(sender.close)


def backoff(attempt: int) -> float:
    """Seconds before the next attempt: about 1, 4, 16, then 60 minutes.

    Longer than the default because relays throttle for minutes (SES asks senders to wait up to
    10) and a 4yz reply is the relay saying "later", not "again now".
    """
    base_seconds = min(60.0 * 4.0 ** max(attempt - 1, 0), 3600.0)
    return base_seconds * random.uniform(0.9, 1.1)


def smtp_sender(ctx: HandlerContext) -> SmtpSender:
    """The machine's SMTP sender (created on first use; tests may put their own in resources)."""
    sender = ctx.resources.get(SMTP_RESOURCE)
    if not isinstance(sender, SmtpSender):
        sender = ctx.resources[SMTP_RESOURCE] = SmtpSender(SmtpConfig.from_settings(ctx.settings))
    return sender


async def _compose(job: Job, ctx: HandlerContext) -> OutgoingEmail:
    if job.args.get("kind") == "bulk":
        # Compiling and rendering tenant templates is CPU work: off the event loop, so heartbeats go on.
        return await asyncio.to_thread(_compose_bulk, job, ctx.settings)
    single = _validated(EmailRequest, job.args)
    sender = _sender_mailbox(single.from_, ctx.settings)
    return OutgoingEmail(
        sender=sender,
        to=_mailboxes(single.to),
        cc=_mailboxes(single.cc),
        bcc=_mailboxes(single.bcc),
        reply_to=_mailboxes(single.reply_to),
        subject=single.subject,
        text=single.text,
        html=single.html,
        headers=single.headers,
        attachments=await _load_attachments(single.attachments, job.tenant_id, ctx),
        message_id=message_id_for(job_id=job.id, tenant_id=job.tenant_id, domain=sender.domain),
    )


def _compose_bulk(job: Job, settings: Settings) -> OutgoingEmail:
    bulk = _validated(BulkEmailArgs, job.args)
    template, recipient = bulk.template, parse_mailbox(bulk.to)
    try:
        subject = render(template.subject, bulk.data, "text").strip()
        text = render(template.text, bulk.data, "text") if template.text is not None else None
        html = render(template.html, bulk.data, "html") if template.html is not None else None
        unsubscribe_url = (
            _unsubscribe_url(template.unsubscribe_url, bulk.data, recipient.addr_spec)
            if template.unsubscribe_url is not None
            else None
        )
    except TemplateFailed as exc:
        raise PermanentJobError(str(exc), kind="template-error") from None
    sender = _sender_mailbox(template.from_, settings)
    return OutgoingEmail(
        sender=sender,
        to=[recipient],
        subject=subject,
        text=text,
        html=html,
        unsubscribe_url=unsubscribe_url,
        message_id=message_id_for(job_id=job.id, tenant_id=job.tenant_id, domain=sender.domain),
    )


def _unsubscribe_url(source: str, data: dict[str, Any], address: str) -> str:
    """The recipient's one-click URL: the template rendered with their data, or `email=` appended."""
    if has_expressions(source):
        return render(source, data, "url")
    parts = urlsplit(source)
    param = f"email={quote(address, safe='')}"
    return urlunsplit(parts._replace(query=f"{parts.query}&{param}" if parts.query else param))


def _validated(model: type[ModelT], args: dict[str, Any]) -> ModelT:
    return parse_args(model, args, kinds=_ADDRESS_FIELDS)


def _mailboxes(values: list[str] | None) -> list[Mailbox]:
    return [parse_mailbox(value) for value in values or []]


def _sender_mailbox(value: str | None, settings: Settings) -> Mailbox:
    if value is not None:
        return parse_mailbox(value)
    try:
        return parse_mailbox(settings.email_from)
    except ValueError:
        pass
    # EMAIL_FROM is the operator's, and may name a host email-validator rejects (no-reply@localhost).
    name, addr = parseaddr(settings.email_from)
    if addr.count("@") != 1 or not addr.isascii() or any(c.isspace() for c in addr):
        raise RetryableJobError("EMAIL_FROM is not an address", kind="invalid-email-from")
    try:
        return Mailbox(addr_spec=addr, display_name=check_header_text(name))
    except ValueError:
        raise RetryableJobError("EMAIL_FROM is not an address", kind="invalid-email-from") from None


async def _load_attachments(attachments: list[Attachment], tenant_id: str, ctx: HandlerContext) -> list[AttachmentFile]:
    if not attachments:
        return []
    # Imported here: shared.storage loads boto3 (hundreds of ms), which most emails never need.
    from shared.keys import check_tenant_key

    files: list[AttachmentFile] = []
    total = 0
    for attachment in attachments:
        key = check_tenant_key(tenant_id, attachment.key)
        content = await asyncio.to_thread(_download, ctx, key)
        total += len(content)
        if total > MAX_ATTACHMENTS_TOTAL_BYTES:
            raise PermanentJobError(
                f"attachments exceed {MAX_ATTACHMENTS_TOTAL_BYTES} bytes in total", kind="too-large"
            )
        files.append(
            AttachmentFile(
                filename=attachment.filename, content=content, content_type=_content_type(attachment.filename)
            )
        )
    return files


def _download(ctx: HandlerContext, key: str) -> bytes:
    """The attachment's bytes. Storage raises PermanentJobError (object-not-found, too-large) itself."""
    from botocore.exceptions import BotoCoreError, ClientError

    storage: TenantStorage = ctx.storage
    try:
        return storage.get_bytes(key, max_bytes=MAX_ATTACHMENT_BYTES)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        raise RetryableJobError(f"storage refused reading {key!r}: {code}", kind="storage-unavailable") from None
    except BotoCoreError as exc:
        raise RetryableJobError(f"storage unreachable reading {key!r}: {exc}", kind="storage-unavailable") from None


def _content_type(filename: str) -> str:
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    # A guessed message/* or multipart/* type would ask the email library to parse the bytes as
    # MIME; any file is attached as opaque bytes instead.
    if guessed is None or guessed.startswith(("message/", "multipart/")):
        return "application/octet-stream"
    return guessed
