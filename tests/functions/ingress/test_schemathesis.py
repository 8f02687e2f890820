"""schemathesis against the live app's published OpenAPI document: no 500s, answers match it.

Bounded so `make test` stays quick on two cores: a few generated examples per operation, no
Hypothesis deadline (timing is not what this checks), one app for every operation.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.result import Ok
from schemathesis.openapi.loaders import from_url
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.live import LiveApp

from .conftest import OpenApp


@pytest.fixture
def fuzzed_app(open_app: OpenApp) -> Iterator[LiveApp]:
    # No dispatcher (nothing runs the jobs it creates) and a budget no fuzzer exhausts.
    with open_app(rate_limit_per_minute=1_000_000) as live:
        yield live


# Headers that frame the HTTP message rather than carry API input: a generated bogus one is refused
# by uvicorn itself (a plain-text 400) before the app sees the request, which says nothing about us.
FRAMING_HEADERS = {"transfer-encoding", "content-length", "connection", "host", "te", "trailer", "upgrade"}


@pytest.fixture
def api_schema(fuzzed_app: LiveApp) -> schemathesis.BaseSchema:
    loaded = from_url(f"{fuzzed_app.url}/documentation/json")
    # Every call below sends the test's own token, so a generated Authorization header never reaches
    # the app. A negative one still marked the case invalid, though, and when the case's other
    # negation vanished on the wire (an extra query key valued `[]` is not sent; a one-element array
    # is sent as a valid scalar), ST201 blamed a valid request: `?rescueAfterSeconds=1000` "accepted".
    # Auth itself is tested in test_auth.py.
    loaded.config.generation.update(with_security_parameters=False)
    return loaded


# The event streams never end by themselves, so no generated call of them could finish: they are
# tested by test_events.py, over real HTTP.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(operation_id=["stream_events", "stream_job_events"])


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_the_api_keeps_the_promises_of_its_document(case: schemathesis.Case, fuzzed_app: LiveApp) -> None:
    token = fuzzed_app.token("tenant-1", "admin jobs:read jobs:write")
    for name in [n for n in case.headers or {} if n.lower() in FRAMING_HEADERS]:
        del case.headers[name]  # type: ignore[union-attr]
    if case.query and str(case.query.get("wait")).isdigit() and int(str(case.query["wait"])) > 1:
        case.query["wait"] = 1  # a valid wait on a live job lasts that long; what is checked is the answer
    case.call_and_validate(
        headers={"Authorization": f"Bearer {token}"},
        # Cross-field rules (exactly one of sourceUrl/sourceKey, an upload key of the caller's
        # tenant, ...) live in model validators that JSON Schema cannot state, so a schema-valid
        # body may rightly be refused with 422. Every other built-in check runs.
        excluded_checks=[positive_data_acceptance],
        timeout=30,
    )


def test_the_fuzzer_leaves_the_token_to_the_test(api_schema: schemathesis.BaseSchema) -> None:
    results = list(api_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results) > 30
    generated = [op.label for op in operations if any(p.name.lower() == "authorization" for p in op.headers)]
    assert generated == []
