"""The OpenAPI 3.1 document, generated from the pydantic models the endpoints validate with.

Request bodies and query parameters come from the very models the endpoints parse (so the
document cannot promise what the code refuses); answers come from functions/ingress/responses.py.
Every operation lists each error it can answer with, as application/problem+json.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from functions.handlers import default as default_functions
from functions.registry import load_registry
from shared.functions import Registry

from . import admin, events, jobs, queue_rules, responses, webhook_secret

REF: Final = "#/components/schemas/{model}"
PROBLEM_TYPE: Final = "application/problem+json"

ERRORS: Final[Mapping[int, str]] = {
    400: "Malformed JSON, an empty body, or a bad Idempotency-Key header.",
    401: "No bearer token, or one that is invalid, unsigned or expired.",
    403: "The token lacks the scope, or names another tenant than `tenantId`.",
    404: "No such resource (another tenant's job answers exactly like a missing one).",
    409: (
        "Conflict: the job cannot be retried in its state, its unique key is held by another live job"
        " (`holdingJobId`), or a request with this Idempotency-Key is in flight."
    ),
    413: "The body is larger than the limit; refused without reading it all.",
    415: "The body is not application/json.",
    422: "Validation failed; `errors` lists each field by path (also a value that cannot be stored: an integer "
    "outside 64 bits, NaN, Infinity, NUL). Also: an Idempotency-Key reused with another body.",
    429: "The tenant's rate limit is spent; retry after `Retry-After` seconds.",
    503: "The database is unreachable; retry later.",
}

_AUTH_ERRORS: Final = (401, 403, 429, 503)
_BODY_ERRORS: Final = (400, 413, 415, 422)

_RATE_HEADERS: Final[dict[str, Any]] = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}, "required": True},
    "RateLimit-Limit": {"description": "requests allowed per window", "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "requests left in the window", "schema": {"type": "integer"}},
    "RateLimit-Reset": {"description": "seconds until the window frees up", "schema": {"type": "integer"}},
}

DESCRIPTION: Final = """\
Turns HTTP requests into background jobs (images, documents, emails, webhooks, exports)
run on short-lived machines.

**Auth.** `Authorization: Bearer <JWT>` (HS256) with `sub`, `tenant` and `scope` claims
(`jobs:write`, `jobs:read`, `admin`). An `admin` token may act for any tenant by naming
`tenantId` in a body. `/health`, `/metrics` and `/documentation` need no token (`/metrics`
takes `METRICS_TOKEN` when one is configured).

**Errors** are `application/problem+json` (RFC 9457); validation failures list each field in
`errors[].path`.

**Idempotency.** Send `Idempotency-Key` with any `POST /jobs/*`: the same key and body within
24 hours replays the first answer (header `Idempotent-Replayed: true`); the same key with
another body is 422; while the first request is still running, 409. Keys are per tenant.

**Rate limit.** Each tenant may make `RATE_LIMIT_PER_MINUTE` requests in any 60 seconds, per
API instance. Answers carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`;
a refused request gets 429 with `Retry-After`.
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """One documented method and path."""

    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    ok: Mapping[int, tuple[type[BaseModel] | str | None, str]]
    errors: Sequence[int] = ()
    body: type[BaseModel] | None = None
    body_required: bool = True
    query: type[BaseModel] | None = None
    path_params: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    header_params: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    auth: str | None = "bearer"
    idempotent: bool = False
    description: str | None = None


def _job_operations(registry: Registry) -> list[Operation]:
    ops = []
    for queue, spec in registry.items():
        description = spec.description
        if queue == "default":
            names = ", ".join(f"`{name}`" for name in sorted(default_functions.FUNCTIONS))
            description = f"Run a function registered on the default queue. Registered here: {names}."
        ops.append(
            Operation(
                method="post",
                path=f"/jobs/{queue}",
                operation_id=f"create_{queue}_job",
                summary=spec.summary,
                tag="jobs",
                body=spec.request,
                ok={
                    201: (responses.Job, "The job, created."),
                    200: (responses.Job, "An existing unique job (`conflict: true`); nothing was created."),
                },
                errors=(*_AUTH_ERRORS, *_BODY_ERRORS, 409),
                idempotent=True,
                description=description,
            )
        )
    from shared.schemas.emails import BulkEmailRequest

    ops.append(
        Operation(
            method="post",
            path="/jobs/emails/bulk",
            operation_id="create_bulk_email_jobs",
            summary="Create one email job per recipient, in one transaction",
            tag="jobs",
            body=BulkEmailRequest,
            ok={201: (responses.BulkCreated, "The batch and its jobs.")},
            errors=(*_AUTH_ERRORS, *_BODY_ERRORS, 409),
            idempotent=True,
        )
    )
    job_id = {"id": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999}}
    ops += [
        Operation(
            method="get",
            path="/jobs/{id}",
            operation_id="get_job",
            summary="Get a job (outputs with fresh presigned URLs); with `wait`, once it is final",
            tag="jobs",
            path_params=job_id,
            query=events.WaitQuery,
            ok={200: (responses.Job, "The job (with `wait`: once final, or as it is when the wait ends).")},
            errors=(*_AUTH_ERRORS, 404, 422),
            description=(
                "With `wait=N` (0 to 60 seconds) the answer comes as soon as the job is completed, discarded "
                "or cancelled, or after N seconds with the job as it is then: no need to poll."
            ),
        ),
        Operation(
            method="get",
            path="/jobs",
            operation_id="list_jobs",
            summary="List the tenant's jobs, newest first",
            tag="jobs",
            query=jobs.ListQuery,
            ok={200: (responses.JobList, "One page of jobs.")},
            errors=(*_AUTH_ERRORS, 422),
        ),
        Operation(
            method="delete",
            path="/jobs",
            operation_id="cancel_jobs",
            summary="Cancel matching jobs (criteria in the query or the body); running ones stop",
            tag="jobs",
            query=jobs.CancelCriteria,
            body=jobs.CancelCriteria,
            body_required=False,
            ok={200: (responses.Cancelled, "How many jobs were cancelled.")},
            errors=(*_AUTH_ERRORS, *_BODY_ERRORS),
        ),
        Operation(
            method="post",
            path="/jobs/{id}/retry",
            operation_id="retry_job",
            summary="Make a discarded or cancelled job available again",
            tag="jobs",
            path_params=job_id,
            ok={200: (responses.Job, "The job, available again.")},
            errors=(*_AUTH_ERRORS, 404, 409),
        ),
    ]
    return ops


_EVENT_FORMAT: Final = """\
Server-Sent Events (`text/event-stream`). Each job event is a default (`message`) event with an
`id:` and JSON `data`: `id`, `type` (`inserted`, `available`, `executing`, `completed`,
`retryable`, `discarded`, `cancelled`, `snoozed`, `rescued`, `handed_back`, `retried`; more types,
such as `progress`, may be added: ignore the ones you do not know), `jobId`, `state`, `queue`,
`tenantId`, `attempt`, `batchId`, and for `retryable`, `discarded` and `rescued` the attempt's
`error`. Reconnecting with `Last-Event-ID` (or `lastEventId`) resumes without a gap while that
event is among the last `EVENTS_REPLAY_SIZE` (10,000 by default) this API instance saw; when it is
not, or when the instance may itself have missed events (its database connection dropped), the
stream sends `event: reset`: read the state afresh (`GET /jobs`). A client that does not keep up
(`EVENTS_CLIENT_BUFFER` events waiting) is disconnected and should reconnect. Idle streams get a
comment line every `EVENTS_KEEPALIVE_SECONDS`. 503 when `EVENTS_MAX_SUBSCRIBERS` streams are open,
429 when the tenant has `EVENTS_MAX_SUBSCRIBERS_PER_TENANT` of them.
"""

_LAST_EVENT_ID: Final = {
    "Last-Event-ID": {
        "description": "resume after this event id (browsers' EventSource sends it when reconnecting)",
        "schema": {"type": "string", "pattern": "^[0-9]{1,20}$"},
    }
}


def _event_operations() -> list[Operation]:
    stream = ("text/event-stream", "An endless event stream (see the description).")
    return [
        Operation(
            method="get",
            path="/events",
            operation_id="stream_events",
            summary="Live job events of the tenant (admins: every tenant, or `tenantId`), as Server-Sent Events",
            tag="events",
            query=events.EventsQuery,
            header_params=_LAST_EVENT_ID,
            ok={200: stream},
            errors=(*_AUTH_ERRORS, 422),
            description=_EVENT_FORMAT + "\nFilters: `queue` and `state` repeat (or take comma-separated values).",
        ),
        Operation(
            method="get",
            path="/jobs/{id}/events",
            operation_id="stream_job_events",
            summary="One job's events as Server-Sent Events, ending once it is final",
            tag="events",
            path_params={"id": {"type": "integer", "minimum": 1, "maximum": 999_999_999_999_999_999}},
            query=events.JobEventsQuery,
            header_params=_LAST_EVENT_ID,
            ok={200: ("text/event-stream", "The job's events, first its current state (`type: current`).")},
            errors=(*_AUTH_ERRORS, 404, 422),
            description=_EVENT_FORMAT,
        ),
        Operation(
            method="get",
            path="/webhooks/secret",
            operation_id="get_webhook_secret",
            summary="The tenant's webhook signing secret (Standard Webhooks), to verify deliveries",
            tag="events",
            query=webhook_secret.SecretQuery,
            ok={200: (responses.WebhookSecret, "The secret.")},
            errors=(*_AUTH_ERRORS, 422),
            description=(
                "Needs `jobs:write` (whoever may create webhook jobs can already have anything signed). "
                "An admin token acts for `tenantId` (required when the token has no tenant). 503 when "
                "WEBHOOK_SIGNING_SECRET is not configured."
            ),
        ),
    ]


def _upload_operations() -> list[Operation]:
    from shared.schemas.uploads import UploadRequest

    return [
        Operation(
            method="post",
            path="/uploads",
            operation_id="create_upload",
            summary="Get a presigned PUT URL for a file to use as a job input",
            tag="uploads",
            body=UploadRequest,
            ok={201: (responses.Upload, "Where and how to PUT the file.")},
            errors=(*_AUTH_ERRORS, *_BODY_ERRORS),
        )
    ]


def _batch_workflow_schedule_operations() -> list[Operation]:
    from shared.schemas.batches import BatchRequest
    from shared.schemas.schedules import ScheduleRequest
    from shared.schemas.workflows import WorkflowRequest

    batch_id = {"id": {"type": "string", "minLength": 1, "maxLength": 64}}
    uuid_id = {"id": {"type": "string", "format": "uuid"}}
    schedule = {200: (responses.Schedule, "The schedule.")}
    return [
        Operation(
            method="post",
            path="/jobs/batch",
            operation_id="create_batch",
            summary="Create jobs of any queues together, as one batch (one transaction)",
            tag="jobs",
            body=BatchRequest,
            ok={201: (responses.BulkCreated, "The batch and its jobs.")},
            errors=(*_AUTH_ERRORS, *_BODY_ERRORS, 409),
            idempotent=True,
        ),
        Operation(
            method="get",
            path="/batches/{id}",
            operation_id="get_batch",
            summary="A batch: its jobs per state and its progress",
            tag="jobs",
            path_params=batch_id,
            ok={200: (responses.Batch, "The batch.")},
            errors=(*_AUTH_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/workflows",
            operation_id="create_workflow",
            summary="Create steps that wait for each other (a DAG), in one transaction",
            tag="workflows",
            body=WorkflowRequest,
            ok={201: (responses.Workflow, "The workflow and its steps.")},
            errors=(*_AUTH_ERRORS, *_BODY_ERRORS, 409),
            idempotent=True,
            description="A step runs once every step it `dependsOn` completed. A dependency that is discarded or "
            "cancelled cancels it (error kind `dependency-failed`) unless it has `runOnFailure`. In a step's "
            'args, `{"$fromStep": "<step>", "output": "<name>"}` becomes the storage key of that output of that '
            "step (one it depends on), taken from the claim that completed it. 422 for a cycle, an unknown or "
            "repeated name, or a reference to a step it does not depend on; 409 when a step's unique key is held.",
        ),
        Operation(
            method="get",
            path="/workflows/{id}",
            operation_id="get_workflow",
            summary="A workflow and every step's state",
            tag="workflows",
            path_params=uuid_id,
            ok={200: (responses.Workflow, "The workflow.")},
            errors=(*_AUTH_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/workflows/{id}/cancel",
            operation_id="cancel_workflow",
            summary="Cancel every unfinished step (running ones stop)",
            tag="workflows",
            path_params=uuid_id,
            ok={200: (responses.Cancelled, "How many steps were cancelled.")},
            errors=(*_AUTH_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/workflows/{id}/retry",
            operation_id="retry_workflow",
            summary="Retry every discarded or cancelled step; each waits again for what it depends on",
            tag="workflows",
            path_params=uuid_id,
            ok={200: (responses.WorkflowRetried, "How many steps were retried, and the workflow.")},
            errors=(*_AUTH_ERRORS, 404, 409),
        ),
        Operation(
            method="post",
            path="/schedules",
            operation_id="create_schedule",
            summary="Insert a job at every occurrence of a cron expression in a time zone",
            tag="schedules",
            body=ScheduleRequest,
            ok={201: (responses.Schedule, "The schedule, with its next occurrence.")},
            errors=(*_AUTH_ERRORS, *_BODY_ERRORS, 409),
        ),
        Operation(
            method="get",
            path="/schedules",
            operation_id="list_schedules",
            summary="The tenant's schedules, by name",
            tag="schedules",
            ok={200: (responses.ScheduleList, "Every schedule of the tenant.")},
            errors=_AUTH_ERRORS,
        ),
        Operation(
            method="get",
            path="/schedules/{id}",
            operation_id="get_schedule",
            summary="A schedule",
            tag="schedules",
            path_params=uuid_id,
            ok=schedule,
            errors=(*_AUTH_ERRORS, 404),
        ),
        Operation(
            method="delete",
            path="/schedules/{id}",
            operation_id="delete_schedule",
            summary="Delete a schedule (the jobs it inserted stay)",
            tag="schedules",
            path_params=uuid_id,
            ok={200: (responses.Deleted, "Deleted.")},
            errors=(*_AUTH_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/schedules/{id}/pause",
            operation_id="pause_schedule",
            summary="Pause a schedule: no jobs until it is resumed",
            tag="schedules",
            path_params=uuid_id,
            ok=schedule,
            errors=(*_AUTH_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/schedules/{id}/resume",
            operation_id="resume_schedule",
            summary="Resume a schedule from its next occurrence (what came due while paused is not run)",
            tag="schedules",
            path_params=uuid_id,
            ok=schedule,
            errors=(*_AUTH_ERRORS, 404),
        ),
    ]


def _admin_operations(registry: Registry) -> list[Operation]:
    queue = {"name": {"type": "string", "enum": sorted(registry)}}
    status = {200: (responses.QueueStatus, "The queue's status.")}
    admin_errors = (*_AUTH_ERRORS,)
    return [
        Operation(
            method="get",
            path="/admin/queues",
            operation_id="list_queues",
            summary="Status of every queue",
            tag="admin",
            ok={200: (responses.QueueStatusList, "Every queue.")},
            errors=admin_errors,
        ),
        Operation(
            method="get",
            path="/admin/queues/{name}",
            operation_id="get_queue",
            summary="Status of one queue, with its claim rules and its busiest tenants and rate keys",
            tag="admin",
            path_params=queue,
            ok={200: (responses.QueueDetail, "The queue's status and per-tenant figures.")},
            errors=(*admin_errors, 404),
        ),
        Operation(
            method="get",
            path="/admin/queues/{name}/limits",
            operation_id="get_queue_limits",
            summary="A queue's claim rules: fairness, per-tenant caps and weights, rate limit per key",
            tag="admin",
            path_params=queue,
            ok={200: (responses.QueueLimits, "The rules.")},
            errors=(*admin_errors, 404),
        ),
        Operation(
            method="put",
            path="/admin/queues/{name}/limits",
            operation_id="set_queue_limits",
            summary="Replace a queue's claim rules, fleet-wide and persisted (fields left out take their defaults)",
            tag="admin",
            path_params=queue,
            body=queue_rules.LimitsBody,
            ok={200: (responses.QueueLimits, "The rules now in force.")},
            errors=(*admin_errors, *_BODY_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/admin/queues/{name}/pause",
            operation_id="pause_queue",
            summary="Pause a queue on every instance: no new claims, no new machines",
            tag="admin",
            path_params=queue,
            ok=status,
            errors=(*admin_errors, 404),
        ),
        Operation(
            method="post",
            path="/admin/queues/{name}/resume",
            operation_id="resume_queue",
            summary="Resume a paused queue",
            tag="admin",
            path_params=queue,
            ok=status,
            errors=(*admin_errors, 404),
        ),
        Operation(
            method="post",
            path="/admin/queues/{name}/scale",
            operation_id="scale_queue",
            summary="Set a queue's fleet-wide concurrency limit (0 stops it)",
            tag="admin",
            path_params=queue,
            body=admin.ScaleBody,
            ok=status,
            errors=(*admin_errors, *_BODY_ERRORS, 404),
        ),
        Operation(
            method="post",
            path="/admin/jobs/prune",
            operation_id="prune_jobs",
            summary="Delete final jobs older than maxAgeSeconds (default PRUNER_MAX_AGE)",
            tag="admin",
            query=admin.PruneQuery,
            ok={200: (responses.Pruned, "How many jobs were deleted.")},
            errors=(*admin_errors, 422),
        ),
        Operation(
            method="post",
            path="/admin/jobs/rescue",
            operation_id="rescue_jobs",
            summary="Rescue executing jobs without a heartbeat for rescueAfterSeconds",
            tag="admin",
            query=admin.RescueQuery,
            ok={200: (responses.Rescued, "How many jobs were rescued.")},
            errors=(*admin_errors, 422),
        ),
        Operation(
            method="get",
            path="/admin/machines",
            operation_id="list_machines",
            summary="Recent function machines, newest first",
            tag="admin",
            ok={200: (responses.MachineList, "Up to 200 machines.")},
            errors=admin_errors,
        ),
    ]


def _operations_operations() -> list[Operation]:
    return [
        Operation(
            method="get",
            path="/health",
            operation_id="health",
            summary="Database, dispatcher role and queues",
            tag="operations",
            auth=None,
            ok={200: (responses.Health, "Healthy.")},
            errors=(503,),
        ),
        Operation(
            method="get",
            path="/metrics",
            operation_id="metrics",
            summary="Prometheus metrics",
            tag="operations",
            auth="metrics",
            ok={200: ("text/plain", "Prometheus text exposition.")},
            errors=(401, 503),
        ),
        Operation(
            method="get",
            path="/documentation",
            operation_id="documentation",
            summary="This documentation, in Swagger UI",
            tag="operations",
            auth=None,
            ok={200: ("text/html", "The Swagger UI page.")},
        ),
        Operation(
            method="get",
            path="/documentation/json",
            operation_id="openapi_document",
            summary="This OpenAPI document",
            tag="operations",
            auth=None,
            ok={200: ("application/json", "The OpenAPI 3.1 document.")},
        ),
    ]


def operations(registry: Registry) -> list[Operation]:
    return [
        *_job_operations(registry),
        *_event_operations(),
        *_batch_workflow_schedule_operations(),
        *_upload_operations(),
        *_admin_operations(registry),
        *_operations_operations(),
    ]


def _schemas(ops: Sequence[Operation]) -> tuple[dict[tuple[type[BaseModel], JsonSchemaMode], Any], dict[str, Any]]:
    """JSON Schemas of every model (requests in validation mode, answers in serialization mode)."""
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {(responses.Problem, "serialization"): None}
    for op in ops:
        for model in (op.body, op.query):
            if model is not None:
                models[(model, "validation")] = None
        for answer, _ in op.ok.values():
            if isinstance(answer, type):
                models[(answer, "serialization")] = None
    refs, top = models_json_schema(list(models), ref_template=REF)
    by_model = {key: refs[key] for key in models}
    return by_model, dict(top.get("$defs", {}))


def _non_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without the `null` branch (a query string cannot send null)."""
    options = schema.get("anyOf")
    if isinstance(options, list):
        kept = [s for s in options if s.get("type") != "null"]
        if len(kept) == 1:
            rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            return {**kept[0], **rest}
    return {k: v for k, v in schema.items() if not (k == "default" and v is None)}


def _query_parameters(model: type[BaseModel], ref: Mapping[str, str], defs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One `in: query` parameter per field of `model` (its component schema is `ref`)."""
    schema = defs[ref["$ref"].rsplit("/", 1)[-1]]
    required = set(schema.get("required", []))
    params = []
    for prop, prop_schema in schema.get("properties", {}).items():
        param_schema = _non_null(dict(prop_schema))
        param: dict[str, Any] = {"name": prop, "in": "query", "required": prop in required, "schema": param_schema}
        if param_schema.get("type") == "array":
            param.update(style="form", explode=True)
        params.append(param)
    return params


def _problem_response(status: int, problem_ref: str) -> dict[str, Any]:
    response: dict[str, Any] = {"description": ERRORS[status], "content": {PROBLEM_TYPE: {"schema": problem_ref}}}
    if status == 429:
        response["headers"] = _RATE_HEADERS
    return response


def _operation(
    op: Operation, refs: Mapping[tuple[type[BaseModel], JsonSchemaMode], Any], defs: Mapping[str, Any]
) -> dict[str, Any]:
    problem_ref = refs[(responses.Problem, "serialization")]
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
    if op.description:
        out["description"] = op.description
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema} for name, schema in op.path_params.items()
    ]
    if op.query is not None:
        params += _query_parameters(op.query, refs[(op.query, "validation")], defs)
    params += [{"name": name, "in": "header", "required": False, **spec} for name, spec in op.header_params.items()]
    if op.idempotent:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Replays the first answer for the same key and body within 24 hours.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
            }
        )
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {
            "required": op.body_required,
            "content": {"application/json": {"schema": refs[(op.body, "validation")]}},
        }
    answers: dict[str, Any] = {}
    for status, (answer, description) in sorted(op.ok.items()):
        if isinstance(answer, type):
            answers[str(status)] = {
                "description": description,
                "content": {"application/json": {"schema": refs[(answer, "serialization")]}},
            }
            if op.idempotent:
                answers[str(status)]["headers"] = {
                    "Idempotent-Replayed": {"description": "present on a replayed answer", "schema": {"const": "true"}}
                }
        elif isinstance(answer, str):
            schema = {"type": "object"} if answer == "application/json" else {"type": "string"}
            answers[str(status)] = {"description": description, "content": {answer: {"schema": schema}}}
    for status in sorted(set(op.errors)):
        answers[str(status)] = _problem_response(status, problem_ref)
    out["responses"] = answers
    if op.auth is None:
        out["security"] = []
    elif op.auth == "metrics":
        out["security"] = [{}, {"metricsToken": []}]
    return out


def build_document(*, server_url: str | None = None, registry: Registry | None = None) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document (of the declared functions unless `registry` is given)."""
    ops = operations(registry if registry is not None else load_registry())
    refs, defs = _schemas(ops)
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        paths.setdefault(op.path, {})[op.method] = _operation(op, refs, defs)
    document: dict[str, Any] = {
        # pydantic writes JSON Schema 2020-12, which the default 3.1 dialect (OAS base) extends.
        "openapi": "3.1.0",
        "info": {"title": "Content Processor", "version": _version(), "description": DESCRIPTION},
        "tags": [
            {"name": "jobs", "description": "Create, read, list, cancel and retry jobs."},
            {"name": "events", "description": "Live job events (Server-Sent Events) and webhook verification."},
            {"name": "workflows", "description": "Steps that wait for each other and pass outputs along."},
            {"name": "schedules", "description": "Jobs inserted at the occurrences of a cron expression."},
            {"name": "uploads", "description": "Presigned uploads of job inputs."},
            {"name": "admin", "description": "Queues, maintenance and machines (`admin` scope)."},
            {"name": "operations", "description": "Health, metrics and this documentation."},
        ],
        "paths": paths,
        "components": {
            "schemas": defs,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "metricsToken": {"type": "http", "scheme": "bearer", "description": "METRICS_TOKEN, when set"},
            },
        },
        "security": [{"bearer": []}],
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _version() -> str:
    try:
        return importlib.metadata.version("content-processor")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
