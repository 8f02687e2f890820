"""The dashboard's named SQL (dashboard/queries.sql), parsed once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, LiteralString

from shared.db.sql import parse_queries

QUERIES: Final[Mapping[str, LiteralString]] = parse_queries(
    Path(__file__).with_name("queries.sql").read_text(encoding="utf-8")
)
