"""Reading the plans auto_explain sends as notices, for the plan tests of this package."""

from __future__ import annotations

import json
from typing import Any, Final

import psycopg

# Every statement's plan, nested ones (inside claim_jobs) included, with its rows and pages, as a
# notice the connection's handler collects (SET LOCAL each, after LOAD 'auto_explain').
NESTED_PLANS: Final = (
    "auto_explain.log_min_duration = 0",
    "auto_explain.log_analyze = on",
    "auto_explain.log_nested_statements = on",
    "auto_explain.log_buffers = on",
    "auto_explain.log_format = json",
    "auto_explain.log_level = notice",
)


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


def jobs_scans(notes: list[str]) -> list[dict[str, Any]]:
    """The scan nodes of `jobs` in the plans among `notes`."""
    return [
        node
        for note in notes
        if "plan:" in note
        for node in nodes(json.loads(note.split("plan:", 1)[1])["Plan"])
        if node.get("Relation Name") == "jobs" and "Scan" in node["Node Type"]
    ]


def jit_compiled(notes: list[str]) -> list[str]:
    """The statements among `notes` whose plan was JIT-compiled (auto_explain adds a "JIT" part)."""
    return [
        " ".join(doc.get("Query Text", "").split())[:80]
        for doc in (json.loads(note.split("plan:", 1)[1]) for note in notes if "plan:" in note)
        if "JIT" in doc
    ]


def explain_nested(conn: psycopg.Connection[Any]) -> list[str]:
    """Open a transaction on `conn` in which every statement's plan (NESTED_PLANS) arrives as a
    notice; returns the list the notices land in. Roll back to end it."""
    notes: list[str] = []
    conn.add_notice_handler(lambda diag: notes.append(diag.message_primary or ""))
    conn.autocommit = False
    conn.execute("LOAD 'auto_explain'")
    for setting in NESTED_PLANS:
        conn.execute(f"SET LOCAL {setting}")
    return notes


def pages_by_statement(notes: list[str]) -> list[tuple[int, str]]:
    """Pages of `jobs` each statement among `notes` read, with its first words, most first."""
    found = []
    for note in notes:
        if "plan:" not in note:
            continue
        doc = json.loads(note.split("plan:", 1)[1])
        pages = sum(
            n.get("Shared Hit Blocks", 0) + n.get("Shared Read Blocks", 0)
            for n in nodes(doc["Plan"])
            if n.get("Relation Name") == "jobs" and "Scan" in n["Node Type"]
        )
        found.append((pages, " ".join(doc.get("Query Text", "").split())[:70]))
    return sorted(found, reverse=True)
