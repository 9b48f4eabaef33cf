"""Paper-style tables: column order, averages, formats."""

import csv
import io
import json

import pytest

from multiret_jax import tables


def test_column_order_and_average(tmp_path):
    rows = {"BM25": {"nq": 50.0, "fever": 70.0, "wow": None, "my_task": 10.0}}
    text = tables.format_table(rows, ["nq", "wow", "fever", "my_task"])
    header = text.splitlines()[0].split()
    assert header == ["FEV", "NQ", "WoW", "my_task", "Avg"]
    parsed = list(csv.reader(io.StringIO(tables.format_table(rows, ["nq", "wow", "fever", "my_task"], "csv"))))
    assert parsed[1] == ["BM25", "70.00", "50.00", "-", "10.00", f"{(70 + 50 + 10) / 3:.2f}"]
    md = tables.format_table(rows, ["nq"], "markdown")
    assert md.splitlines()[0] == "|  | NQ | Avg |" and "| BM25 | 50.00 | 50.00 |" in md
    paths = tables.write_tables(str(tmp_path / "t"), rows, ["nq", "fever"])
    assert json.load(open(paths[-1]))["BM25"]["Avg"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="unknown table format"):
        tables.format_table(rows, ["nq"], "html")
