"""Format-specific pieces of an export: content types, formula neutralisation, JSON array
framing of a line stream, and XLSX workbooks written row by row to disk.

CSV, NDJSON and JSON bytes come straight from Postgres (`COPY`, see shared/datasets.py); only
XLSX cells are built in Python, so that is where the Python twin of the SQL neutralisation runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from openpyxl.worksheet._write_only import WriteOnlyWorksheet

from shared.datasets import FORMULA_TRIGGERS, LIST_SEPARATOR, Column, ColumnKind


@dataclass(frozen=True, slots=True)
class FormatSpec:
    content_type: str


FORMATS: Final[dict[str, FormatSpec]] = {
    "csv": FormatSpec("text/csv; charset=utf-8"),
    "json": FormatSpec("application/json"),
    "ndjson": FormatSpec("application/x-ndjson"),
    "xlsx": FormatSpec("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
}

# An XLSX sheet holds 1,048,576 rows; one is the header.
XLSX_MAX_DATA_ROWS: Final = 1_048_575

# Characters an XLSX cell cannot hold (openpyxl refuses them rather than writing a broken file).
_XLSX_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def neutralise(text: str) -> str:
    """`text` with a `'` in front when it starts with a formula trigger (= + - @ TAB CR LF NUL)."""
    return "'" + text if text and text[0] in FORMULA_TRIGGERS else text


def xlsx_text(text: str) -> str:
    """A safe XLSX string cell: neutralised, then control characters XLSX forbids replaced by U+FFFD."""
    return _XLSX_ILLEGAL.sub("\ufffd", neutralise(text))


class JsonArrayFramer:
    """Turns a stream of LF-terminated JSON texts (which hold no raw LF) into one JSON array.

    Works on any split of the stream: a separator is only written once the next text starts,
    so the last element gets none.
    """

    def __init__(self) -> None:
        self._started = False
        self._row_ended = False  # the stream so far ends with a complete line

    def feed(self, data: bytes | bytearray) -> bytes:
        """The array bytes for the next piece of the line stream."""
        if not data:
            return b""
        out = bytearray()
        if not self._started:
            out += b"[\n"
            self._started = True
        elif self._row_ended:
            out += b",\n"
        body = bytes(data)
        self._row_ended = body.endswith(b"\n")
        if self._row_ended:
            body = body[:-1]
        out += body.replace(b"\n", b",\n")
        return bytes(out)

    def close(self) -> bytes:
        """The bytes that end the array (an empty array when nothing was fed)."""
        return b"\n]\n" if self._started else b"[]\n"


Converter = Callable[[Any], Any]


class XlsxFile:
    """A write-only workbook at `path`, one sheet per XLSX_MAX_DATA_ROWS rows, each with a header.

    Memory stays flat whatever the row count: openpyxl streams each sheet's XML to a temporary
    file (inline strings, no shared-string table) and zips them on `save`. Disk holds about the
    uncompressed sheets plus the final file meanwhile.
    """

    def __init__(
        self, path: Path, *, title: str, columns: Sequence[Column], rows_per_sheet: int = XLSX_MAX_DATA_ROWS
    ) -> None:
        if not 1 <= rows_per_sheet <= XLSX_MAX_DATA_ROWS:
            raise ValueError(f"rows_per_sheet must be between 1 and {XLSX_MAX_DATA_ROWS}")
        self.path = path
        self.title = title
        self.header = [column.name for column in columns]
        self.rows_per_sheet = rows_per_sheet
        self.rows = 0
        # openpyxl loads here, on the machines that write XLSX, not wherever this module is imported.
        from openpyxl import Workbook
        from openpyxl.cell import WriteOnlyCell
        from openpyxl.cell.cell import ERROR_CODES

        self._cell, self._error_codes = WriteOnlyCell, ERROR_CODES
        self._workbook = Workbook(write_only=True)
        self._sheet: WriteOnlyWorksheet | None = None
        self._sheet_rows = 0
        self._converters = [self._converter(column.kind) for column in columns]

    def _converter(self, kind: ColumnKind) -> Converter:
        match kind:
            case ColumnKind.INTEGER:
                return _identity
            case ColumnKind.TEXT:
                return self._text
            case ColumnKind.TEXT_LIST:
                return lambda items: None if items is None else self._text(LIST_SEPARATOR.join(items))
            case ColumnKind.TIMESTAMP:
                return _naive_utc
        raise ValueError(f"unknown column kind {kind!r}")  # pragma: no cover - exhaustive match

    def _text(self, value: str | None) -> Any:
        if value is None:
            return None
        text = xlsx_text(value)
        if text in self._error_codes:
            # openpyxl would type "#N/A" and friends as error cells; keep them strings.
            cell = self._cell(self._current_sheet(), value=text)
            cell.data_type = "s"
            return cell
        return text

    def _current_sheet(self) -> WriteOnlyWorksheet:
        if self._sheet is None or self._sheet_rows >= self.rows_per_sheet:
            number = len(self._workbook.worksheets) + 1
            title = self.title if number == 1 else f"{self.title} ({number})"
            self._sheet = self._workbook.create_sheet(title=title)
            self._sheet.append(self.header)
            self._sheet_rows = 0
        return self._sheet

    def write_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        """Append rows of typed values (in column order). Blocking: run it in a thread."""
        converters = self._converters
        for row in rows:
            sheet = self._current_sheet()
            sheet.append([convert(value) for convert, value in zip(converters, row, strict=True)])
            self._sheet_rows += 1
            self.rows += 1

    def save(self) -> None:
        """Write the workbook to `path` (a workbook with no rows still gets its header sheet)."""
        self._current_sheet()
        self._workbook.save(str(self.path))

    def discard(self) -> None:
        """Remove openpyxl's temporary sheet files of an abandoned workbook."""
        for sheet in self._workbook.worksheets:
            # openpyxl has no public way to drop an unsaved write-only sheet: close its row
            # generator, then its XML stream (in that order, so neither writes to a closed
            # file), then delete the stream's file. Best effort: this runs while another
            # error or a cancellation is already propagating.
            rows, writer = getattr(sheet, "_rows", None), getattr(sheet, "_writer", None)
            try:
                if rows is not None:
                    rows.close()
                if writer is not None:
                    writer.close()
                    writer.cleanup()
            except Exception:  # noqa: S110 - never mask the error that abandoned the workbook
                pass


def _identity(value: Any) -> Any:
    return value


def _naive_utc(value: datetime | None) -> datetime | None:
    # Excel has no time zones: write UTC wall time (the CSV export does the same).
    return None if value is None else value.astimezone(UTC).replace(tzinfo=None)
