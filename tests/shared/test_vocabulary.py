"""The shared words stay one vocabulary: the database, the API schemas and telemetry agree with
shared/vocabulary.py."""

from __future__ import annotations

import re
import typing

import psycopg

from shared import telemetry
from shared.schemas.common import UniqueState
from shared.vocabulary import IN_FLIGHT_STATES, Event, JobState


def test_the_database_knows_exactly_these_states(settings) -> None:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'jobs_state_valid'"
        ).fetchone()
    assert row is not None
    assert set(re.findall(r"'(\w+)'", row[0])) == {state.value for state in JobState}


def test_unique_states_in_the_api_are_job_states() -> None:
    assert set(typing.get_args(UniqueState)) == {state.value for state in JobState}
    assert set(IN_FLIGHT_STATES) <= set(JobState)


def test_telemetry_accepts_exactly_the_event_names() -> None:
    assert telemetry.EVENTS == frozenset(Event)
