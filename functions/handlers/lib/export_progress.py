"""Counting the rows of a COPY stream as it goes by, for progress reports.

The final count comes from COPY itself; this is the running figure while blocks stream. A CSV
row ends at a newline outside quotes (a quoted cell may hold newlines, and `""` inside one is two
quotes that cancel out); a JSON-lines row ends at every newline. All scanning is done by C code
(`bytes.count`, `re.sub`), so counting costs little next to the upload.
"""

from __future__ import annotations

import re
from typing import Final

_QUOTED: Final = re.compile(rb'"[^"]*"')


class RowCounter:
    def __init__(self, *, csv: bool, header_rows: int = 0) -> None:
        self.csv = csv
        self.header_rows = header_rows
        self.lines = 0
        self._in_quotes = False  # a quoted cell spans the end of the last block

    def feed(self, block: bytes) -> int:
        """Count the row ends in `block`; returns the data rows seen so far."""
        if not self.csv:
            self.lines += block.count(b"\n")
            return self.rows
        text = (b'"' + block) if self._in_quotes else block
        odd = text.count(b'"') % 2 == 1
        if odd:
            text = text[: text.rfind(b'"')]  # the rest of the block is inside an open quote
        self._in_quotes = odd
        self.lines += _QUOTED.sub(b"", text).count(b"\n")
        return self.rows

    @property
    def rows(self) -> int:
        return max(0, self.lines - self.header_rows)
