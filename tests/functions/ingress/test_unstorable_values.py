"""A value no JSON encoder or jsonb column can hold is a 422 naming its path, for that request alone.

Integers outside signed 64 bits, NaN, Infinity and numbers that overflow a double pass Python's
and pydantic's JSON parsers; before the rule they reached the group commit, where orjson raised
for the whole batch (a 500 for every concurrent request of every tenant) or quietly stored null.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from tests.support.live import LiveApp

from .conftest import assert_problem

BAD_NUMBERS = [
    "18446744073709551616",
    "9223372036854775808",
    "-9223372036854775809",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
]
SLOT = "@BAD@"  # where the bad number goes; replaced in the JSON text, quotes and all

WEBHOOK: dict[str, Any] = {"url": "https://example.com/hook", "event": "invoice.paid"}
BULK: dict[str, Any] = {"subject": "Hello", "text": "Hi {{ n }}"}

# (route, body with a SLOT where the bad value goes, the path the 422 must name)
PLACES: list[tuple[str, dict[str, Any], str]] = [
    ("/jobs/default", {"function": "echo", "args": {"n": SLOT}}, "args.n"),
    ("/jobs/default", {"function": "echo", "args": {"deep": [{"n": SLOT}]}}, "args.deep.0.n"),
    ("/jobs/default", {"function": "echo", "args": {}, "options": {"meta": {"n": SLOT}}}, "options.meta.n"),
    ("/jobs/webhooks", {**WEBHOOK, "payload": {"n": SLOT}}, "payload.n"),
    ("/jobs/webhooks", {**WEBHOOK, "payload": SLOT}, "payload"),
    ("/jobs/documents", {"html": "<p>{{ n }}</p>", "data": {"n": SLOT}}, "data.n"),
    (
        "/jobs/emails/bulk",
        {**BULK, "recipients": [{"to": "a@example.com", "data": {"n": SLOT}}]},
        "recipients.0.data.n",
    ),
]


def _body(template: dict[str, Any], bad: str) -> bytes:
    text = json.dumps(template)
    assert text.count(f'"{SLOT}"') == 1
    return text.replace(f'"{SLOT}"', bad).encode()


def _post(client: httpx.Client, route: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return client.post(route, content=body, headers={"Content-Type": "application/json", **(headers or {})})


@pytest.mark.parametrize(("route", "template", "path"), PLACES, ids=[p[2] for p in PLACES])
def test_an_unstorable_number_is_422_naming_its_path_and_writes_nothing(
    app: LiveApp, route: str, template: dict[str, Any], path: str
):
    with app.client() as client:
        for bad in BAD_NUMBERS:
            body = assert_problem(_post(client, route, _body(template, bad)), 422)
            assert [e["path"] for e in body["errors"]] == [path], (bad, body)
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


@pytest.mark.parametrize(
    "headers_or_options",
    [{"Idempotency-Key": "k-1"}, {"unique": {"period": 60}}],
    ids=["idempotency-key", "unique"],
)
def test_the_single_insert_paths_refuse_it_the_same_way(app: LiveApp, headers_or_options: dict[str, Any]):
    headers = headers_or_options if "Idempotency-Key" in headers_or_options else {}
    options = {} if headers else headers_or_options
    with app.client() as client:
        for bad in BAD_NUMBERS:
            template = {"function": "echo", "args": {"n": SLOT}, "options": options}
            body = assert_problem(_post(client, "/jobs/default", _body(template, bad), headers), 422)
            assert [e["path"] for e in body["errors"]] == ["args.n"]
        # The refusal was not remembered: the key still takes a good request.
        good = _post(client, "/jobs/default", _body({"function": "echo", "args": {"n": SLOT}}, "1"), headers)
        assert good.status_code == 201, good.text
    assert app.sql("SELECT count(*) FROM jobs") == [(1,)]


def test_values_at_the_bounds_are_stored_and_read_back(app: LiveApp):
    body = b'{"function": "echo", "args": {"max": 9223372036854775807, "min": -9223372036854775808, "f": 9.2e18}}'
    with app.client() as client:
        created = _post(client, "/jobs/default", body)
        assert created.status_code == 201, created.text
        # jsonb prints a numeric without an exponent: 9.2e18 reads back as an integer, still in int64.
        expected = {"max": 2**63 - 1, "min": -(2**63), "f": 9200000000000000000}
        assert client.get(f"/jobs/{created.json()['id']}").json()["args"] == expected
        assert [job["args"] for job in client.get("/jobs").json()["jobs"]] == [expected]
    assert app.sql("SELECT args->>'f' FROM jobs") == [("9200000000000000000",)]


def test_bodies_nested_past_the_parsers_limit_are_refused_without_a_500(app: LiveApp):
    # pydantic's parser stops at 200 levels (a 400), below orjson's 255: a stored value never nests too deep.
    with app.client() as client:
        for depth in (250, 5000):
            for leaf in ("1", "NaN"):
                nested = ("[" * depth + leaf + "]" * depth).encode()
                body = b'{"function": "echo", "args": {"n": ' + nested + b"}}"
                response = _post(client, "/jobs/default", body)
                assert response.status_code in (400, 422), (depth, leaf, response.text)
                assert_problem(response, response.status_code)
    assert app.sql("SELECT count(*) FROM jobs") == [(0,)]


async def _post_concurrently(app: LiveApp, bodies: list[bytes]) -> list[httpx.Response]:
    headers = {"Authorization": f"Bearer {app.token()}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(
        base_url=app.url, headers=headers, timeout=60, trust_env=False, limits=limits
    ) as client:
        return list(await asyncio.gather(*(client.post("/jobs/default", content=body) for body in bodies)))


def _mixed_bodies(good: int, bad_values: list[str]) -> tuple[list[bytes], list[bool]]:
    """`good` echo bodies numbered 0.. with a bad one after every few; and which ones are bad."""
    bodies: list[bytes] = []
    is_bad: list[bool] = []
    for n in range(good):
        bodies.append(_body({"function": "echo", "args": {"n": SLOT}}, str(n)))
        is_bad.append(False)
        if n % 10 == 5:
            bodies.append(_body({"function": "echo", "args": {"n": SLOT}}, bad_values[n // 10 % len(bad_values)]))
            is_bad.append(True)
    return bodies, is_bad


def _check_only_the_bad_failed(app: LiveApp, responses: list[httpx.Response], is_bad: list[bool], good: int) -> None:
    assert not [r.text for r in responses if r.status_code >= 500]
    for response, bad in zip(responses, is_bad, strict=True):
        if bad:
            assert_problem(response, 422)
        else:
            assert response.status_code == 201, response.text
    created = [r.json() for r, bad in zip(responses, is_bad, strict=True) if not bad]
    assert sorted(job["args"]["n"] for job in created) == list(range(good))
    rows = app.sql("SELECT id, (args->>'n')::int FROM jobs")
    assert sorted(rows) == sorted((job["id"], job["args"]["n"]) for job in created)


def test_concurrent_good_requests_succeed_while_bad_values_are_in_flight(app: LiveApp):
    bodies, is_bad = _mixed_bodies(150, BAD_NUMBERS)
    responses = asyncio.run(_post_concurrently(app, bodies))
    _check_only_the_bad_failed(app, responses, is_bad, 150)
    for response, bad in zip(responses, is_bad, strict=True):
        if bad:
            assert [e["path"] for e in response.json()["errors"]] == ["args.n"]


def test_a_row_the_database_refuses_in_the_group_commit_fails_only_its_own_request(app: LiveApp):
    # Defence in depth: should a value ever pass validation and still be refused by the database
    # (here a constraint only this test's database has), the batch it lands in is split and
    # retried one by one, so only its own request fails, with a 4xx.
    app.sql("ALTER TABLE jobs ADD CONSTRAINT test_refuse CHECK ((args->>'n')::bigint >= 0)")
    bodies, is_bad = _mixed_bodies(150, ["-1", "-9223372036854775808"])
    responses = asyncio.run(_post_concurrently(app, bodies))
    _check_only_the_bad_failed(app, responses, is_bad, 150)
