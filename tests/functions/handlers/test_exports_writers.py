"""Format pieces of exports: neutralisation, JSON array framing, XLSX files."""

from __future__ import annotations

import json
from pathlib import Path

import openpyxl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from functions.handlers.lib.export_writers import JsonArrayFramer, XlsxFile, neutralise, xlsx_text
from shared.datasets import FORMULA_TRIGGERS, Column, ColumnKind

TRIGGERS = sorted(FORMULA_TRIGGERS)
ANY_TEXT = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=30)
CELL_TEXT = st.one_of(ANY_TEXT, st.builds(str.__add__, st.sampled_from(TRIGGERS), ANY_TEXT))


@pytest.mark.parametrize("text", ["=1+2", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "\nx", "\0x", "=cmd|' /C calc'!A0"])
def test_a_leading_formula_trigger_gets_a_quote(text: str):
    assert neutralise(text) == "'" + text


@pytest.mark.parametrize("text", ["", "a=1", "1", "'=already", " =x", "é"])
def test_other_text_is_left_alone(text: str):
    assert neutralise(text) == text


def test_xlsx_text_replaces_characters_a_workbook_cannot_hold():
    assert xlsx_text("a\x01b\x0bc\td\ne") == "a\ufffdb\ufffdc\td\ne"
    assert xlsx_text("\x00x") == "'\ufffdx"


@settings(max_examples=200, deadline=None, database=None)
@given(
    texts=st.lists(st.text(alphabet=st.characters(blacklist_characters="\n"), max_size=8), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=5),
)
def test_the_framer_makes_one_json_array_from_any_split_of_the_lines(texts: list[str], cuts: list[int]):
    stream = b"".join(json.dumps({"t": t}).encode() + b"\n" for t in texts)
    pieces, start = [], 0
    for cut in sorted(cut % (len(stream) + 1) for cut in cuts):
        pieces.append(stream[start:cut])
        start = cut
    pieces.append(stream[start:])
    framer = JsonArrayFramer()

    body = b"".join(framer.feed(piece) for piece in pieces) + framer.close()

    assert json.loads(body) == [{"t": t} for t in texts]


def text_columns(*names: str) -> list[Column]:
    return [Column(name=name, kind=ColumnKind.TEXT, expr=sql.Identifier(name)) for name in names]


@settings(max_examples=60, deadline=None, database=None)
@given(values=st.lists(CELL_TEXT, min_size=1, max_size=15))
@example(values=["\r\n", "=\r", "\n\n"])
def test_no_xlsx_cell_is_ever_a_formula(tmp_path_factory: pytest.TempPathFactory, values: list[str]):
    path = tmp_path_factory.mktemp("xlsx") / "t.xlsx"
    book = XlsxFile(path, title="t", columns=text_columns("v"))

    book.write_rows([value] for value in values)
    book.save()

    cells = [row[0] for row in openpyxl.load_workbook(path)["t"].iter_rows(min_row=2)]
    assert all(cell.data_type == "s" for cell in cells if cell.value is not None)
    # Reading XML turns CR LF and lone CR into LF, and an empty string into an empty cell.
    as_read = [xlsx_text(v).replace("\r\n", "\n").replace("\r", "\n") for v in values]
    assert [cell.value or "" for cell in cells] == as_read


def test_xlsx_lists_and_typed_columns(tmp_path: Path):
    columns = [
        Column(name="n", kind=ColumnKind.INTEGER, expr=sql.SQL("n")),
        Column(name="tags", kind=ColumnKind.TEXT_LIST, expr=sql.SQL("tags")),
    ]
    book = XlsxFile(tmp_path / "t.xlsx", title="t", columns=columns)

    book.write_rows([(-5, ["-a", "b"]), (None, None), (7, [])])
    book.save()

    rows = list(openpyxl.load_workbook(tmp_path / "t.xlsx")["t"].iter_rows(values_only=True))
    assert rows == [("n", "tags"), (-5, "'-a,b"), (None, None), (7, None)]  # numbers stay numbers
    assert book.rows == 3


def test_an_empty_workbook_still_has_its_header(tmp_path: Path):
    book = XlsxFile(tmp_path / "t.xlsx", title="jobs", columns=text_columns("a", "b"))

    book.save()

    assert list(openpyxl.load_workbook(tmp_path / "t.xlsx")["jobs"].iter_rows(values_only=True)) == [("a", "b")]


@pytest.mark.parametrize("rows_per_sheet", [0, 1_048_576])
def test_a_sheet_cannot_hold_more_rows_than_excel(tmp_path: Path, rows_per_sheet: int):
    with pytest.raises(ValueError, match="rows_per_sheet"):
        XlsxFile(tmp_path / "t.xlsx", title="t", columns=text_columns("a"), rows_per_sheet=rows_per_sheet)
