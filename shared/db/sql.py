"""Named SQL queries, parsed once from queries.sql."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final, LiteralString

_NAME = re.compile(r"^-- name: (\w+)\s*$")


def parse_queries(text: str) -> dict[str, LiteralString]:
    """Split `text` into blocks headed by `-- name: x`. Raises ValueError on a duplicate name."""
    queries: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        match = _NAME.match(line)
        if match:
            name = match.group(1)
            if name in queries:
                raise ValueError(f"duplicate query name {name!r}")
            current = queries[name] = []
        elif current is not None and not line.startswith("--"):
            current.append(line)
    return {name: "\n".join(lines).strip() for name, lines in queries.items()}  # type: ignore[misc]


QUERIES: Final[Mapping[str, LiteralString]] = parse_queries(
    (Path(__file__).with_name("queries.sql")).read_text(encoding="utf-8")
)
