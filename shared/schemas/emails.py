"""`POST /jobs/emails` and `POST /jobs/emails/bulk`, and the fan-out of a bulk request into jobs.

Every header value (subject, addresses, display names, extra headers, file names) is refused at
the API when it holds CR, LF or any other control character, so such input is a 422, never a 500
and never an extra header. Each address field holds exactly one mailbox (see `email_address`).

A bulk request becomes one job per recipient (`expand_bulk`). The templates are compiled here, so a
syntax error is a 422, but each recipient's message is rendered by the handler: that keeps the
request cheap for 10,000 recipients, and one recipient's bad data fails only that recipient's job.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, NotRequired

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
    with_config,
)
from typing_extensions import TypedDict

from shared.email_templates import TemplateKind, check_template
from shared.outbound_policy import CallbackUrl
from shared.schemas.common import CamelModel, JobRequest
from shared.schemas.email_address import BULK_MAILBOX_PATTERN, check_header_text, parse_mailbox

MAX_RECIPIENTS: Final = 50  # per field: to, cc, bcc
MAX_BULK_RECIPIENTS: Final = 10_000
MAX_ATTACHMENTS: Final = 10
MAX_EXTRA_HEADERS: Final = 20
MAX_BODY_CHARS: Final = 1024 * 1024
MAX_TEMPLATE_CHARS: Final = 256 * 1024
MAX_HEADER_CHARS: Final = 900  # a value and its header name fit one 998-character line (RFC 5322)

# Extra headers a tenant may set: any X-* header, and a few that only describe the message.
# Everything else (From, To, Subject, Date, Message-ID, MIME and routing headers) is ours.
_EXTRA_HEADER_NAME: Final = re.compile(r"^X-[A-Za-z0-9][A-Za-z0-9-]{0,62}$", re.IGNORECASE)
_EXTRA_HEADER_ALLOWED: Final = frozenset(
    {"in-reply-to", "references", "list-id", "precedence", "auto-submitted", "keywords", "comments"}
)
_STORAGE_KEY: Final = re.compile(r"^tenants/[A-Za-z0-9._-]+/[^\x00-\x1f\x7f]+$")
_FILENAME_SEPARATORS: Final = re.compile(r"[/\\]")
_JINJA_BLOCK: Final = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}")


def _mailbox(value: str) -> str:
    return str(parse_mailbox(value))


def _header_text(value: str) -> str:
    return check_header_text(value)


def _subject(value: str) -> str:
    # Checked before stripping, so a trailing CR/LF is refused rather than quietly dropped.
    return check_header_text(value).strip()


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")  # Postgres JSONB cannot store them
    return value


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


def _filename(value: str) -> str:
    check_header_text(value)
    if _FILENAME_SEPARATORS.search(value) or value in {".", ".."}:
        raise ValueError("must be a file name, without / or \\")
    return value


def _storage_key(value: str) -> str:
    if not _STORAGE_KEY.fullmatch(value) or ".." in value.split("/") or "//" in value:
        raise ValueError("must be a storage key of this tenant (tenants/<tenant>/...)")
    return value


def _https_url_template(value: str) -> str:
    # The literal text must already look like an https URL; what the {{ ... }} parts render to is
    # percent-encoded, and the rendered URL is checked again before it becomes a header.
    check_header_text(value)
    literal = _JINJA_BLOCK.sub("", value)
    if not value.startswith("https://") or any(c in literal for c in " <>\"'{}"):
        raise ValueError("must be an https URL without spaces, quotes or angle brackets")
    return value


def _template(kind: TemplateKind) -> AfterValidator:
    return AfterValidator(lambda source: check_template(source, kind))


_MAILBOX_SCHEMA: Final[dict[str, Any]] = {
    "type": "string",
    "minLength": 3,
    "maxLength": 512,
    "description": "addr@example.com or Name <addr@example.com>",
}
Mailbox = Annotated[str, StringConstraints(min_length=3, max_length=512), AfterValidator(_mailbox)]
# Bulk lists are checked by one pattern that pydantic runs natively (10,000 Python calls would
# cost more than the insert): one ASCII address, bare or as Name <addr>, nothing that separates or
# breaks lines. The handler validates each address thoroughly before sending to it.
BulkMailbox = Annotated[str, StringConstraints(min_length=3, max_length=512, pattern=BULK_MAILBOX_PATTERN)]
# One address or a list of them on the wire; always a list once validated (and in stored args).
MailboxList = Annotated[
    list[Mailbox],
    BeforeValidator(_one_or_many),
    Field(min_length=1, max_length=MAX_RECIPIENTS),
    WithJsonSchema(
        {
            "anyOf": [
                _MAILBOX_SCHEMA,
                {"type": "array", "items": _MAILBOX_SCHEMA, "minItems": 1, "maxItems": MAX_RECIPIENTS},
            ]
        },
        mode="validation",
    ),
]
HeaderText = Annotated[str, StringConstraints(max_length=MAX_HEADER_CHARS), AfterValidator(_header_text)]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=MAX_HEADER_CHARS), AfterValidator(_subject)]
Body = Annotated[str, StringConstraints(max_length=MAX_BODY_CHARS), AfterValidator(_no_nul)]
HeaderName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
_TEMPLATE_SIZE: Final = StringConstraints(max_length=MAX_TEMPLATE_CHARS)
UnsubscribeUrl = Annotated[str, StringConstraints(max_length=900), AfterValidator(_https_url_template)]


class Attachment(CamelModel):
    """A file attached from the tenant's storage (an upload or another job's output)."""

    filename: Annotated[str, StringConstraints(min_length=1, max_length=255), AfterValidator(_filename)]
    key: Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_storage_key)]


class _Bodies(CamelModel):
    @model_validator(mode="after")
    def _needs_a_body(self) -> Any:
        if getattr(self, "html", None) is None and getattr(self, "text", None) is None:
            raise ValueError("give html, text or both")
        return self


class EmailRequest(JobRequest, _Bodies):
    """One email to up to 50 To (and 50 Cc, 50 Bcc) recipients."""

    to: MailboxList
    cc: MailboxList | None = None
    bcc: MailboxList | None = None
    from_: Mailbox | None = Field(None, alias="from", description="defaults to EMAIL_FROM")
    reply_to: MailboxList | None = None
    subject: Subject
    html: Body | None = None
    text: Body | None = None
    headers: dict[HeaderName, HeaderText] = Field(default_factory=dict, max_length=MAX_EXTRA_HEADERS)
    attachments: list[Attachment] = Field(default_factory=list, max_length=MAX_ATTACHMENTS)

    @field_validator("headers")
    @classmethod
    def _safe_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        seen: set[str] = set()
        for name in headers:
            lowered = name.lower()
            if not (_EXTRA_HEADER_NAME.fullmatch(name) or lowered in _EXTRA_HEADER_ALLOWED):
                raise ValueError(f"header {name!r} is not allowed (use X-* or one of {sorted(_EXTRA_HEADER_ALLOWED)})")
            if lowered in seen:
                raise ValueError(f"header {name!r} is given twice")
            seen.add(lowered)
        return headers

    @model_validator(mode="after")
    def _attachments_of_this_tenant(self) -> EmailRequest:
        # The handler checks every key against the job's tenant; this is the early, clear 422.
        if self.tenant_id is not None:
            prefix = f"tenants/{self.tenant_id}/"
            for attachment in self.attachments:
                if not attachment.key.startswith(prefix):
                    raise ValueError(f"attachment key {attachment.key!r} is outside this tenant's storage")
        return self


@with_config(ConfigDict(extra="forbid"))
class BulkRecipient(TypedDict):
    """One recipient of a bulk email and the variables its templates see.

    A TypedDict rather than a model: 10,000 of them validate and fan out at about twice the speed.
    """

    to: BulkMailbox
    data: NotRequired[dict[str, Any]]


class BulkTemplate(_Bodies):
    """What every message of a bulk email shares; stored in each recipient's job."""

    subject: Annotated[str, StringConstraints(min_length=1, max_length=MAX_HEADER_CHARS), _template("text")]
    html: Annotated[str, _TEMPLATE_SIZE, AfterValidator(_no_nul), _template("html")] | None = None
    text: Annotated[str, _TEMPLATE_SIZE, AfterValidator(_no_nul), _template("text")] | None = None
    from_: Mailbox | None = Field(None, alias="from", description="defaults to EMAIL_FROM")
    unsubscribe_url: Annotated[UnsubscribeUrl, _template("url")] | None = Field(
        None,
        description="adds RFC 8058 one-click List-Unsubscribe headers; a Jinja2 template over the recipient's "
        "data (values are percent-encoded), or a plain URL to which `email=<address>` is appended",
    )

    @field_validator("subject")
    @classmethod
    def _subject_text(cls, subject: str) -> str:
        # Rendered subjects are checked again per recipient; this refuses a broken literal early.
        return check_header_text(subject)


class BulkEmailRequest(JobRequest, BulkTemplate):
    """One templated email per recipient (up to 10,000), each its own job in one batch."""

    recipients: list[BulkRecipient] = Field(min_length=1, max_length=MAX_BULK_RECIPIENTS)
    callback_url: CallbackUrl | None = Field(
        None,
        description="https URL notified once (signed webhook `batch.finished`) when every email of the batch is "
        "final; `options.callbackUrl` is notified per email",
    )

    def template(self) -> dict[str, Any]:
        """The shared part of every recipient's job args (camelCase, as stored)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, include=_TEMPLATE_FIELDS)


_TEMPLATE_FIELDS: Final[set[str]] = set(BulkTemplate.model_fields)


class BulkEmailArgs(CamelModel):
    """The args of one job made by `expand_bulk`; the handler tells them from EmailRequest by `kind`."""

    kind: Literal["bulk"] = "bulk"
    to: Annotated[str, StringConstraints(min_length=3, max_length=512), AfterValidator(_mailbox)]
    data: dict[str, Any] = Field(default_factory=dict)
    template: BulkTemplate


def expand_bulk(request: BulkEmailRequest) -> list[dict[str, Any]]:
    """The args of one email job per recipient, in order; the ingress inserts them in one batch.

    Cheap on purpose (no per-recipient validation beyond what the request already did): the
    shared template dict is the same object in every item, so serialise, don't mutate.
    """
    template = request.template()
    return [
        {"kind": "bulk", "to": r["to"], "data": r.get("data", {}), "template": template} for r in request.recipients
    ]
