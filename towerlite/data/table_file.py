"""Reading a user's table file — CSV with a header row, or JSON Lines — into string columns with
each row's line number, for errors that name lines (catalog update's items, fold-in's feedback)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from towerlite.errors import TowerliteError

JSONL_SUFFIXES = (".jsonl", ".ndjson")


def read_rows(path: Path, what: str) -> tuple[pd.DataFrame, list[int]]:
    """(the rows, each row's line in the file). `what` names the file in errors ("items").
    An empty file gives no rows; the caller says whether that is an error."""
    path = Path(path)
    if not path.is_file():
        raise TowerliteError(f"{path}: no such {what} file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    raise TowerliteError(f"{path}: {what} must be CSV (.csv) or JSON Lines (.jsonl)")


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[int]]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        return pd.DataFrame(), []
    except (UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise TowerliteError(f"{path}: not a readable UTF-8 CSV file "
                             f"({' '.join(str(exc).split())})") from None
    return frame, [i + 2 for i in range(len(frame))]  # line numbers after the header


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    records, lines = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TowerliteError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TowerliteError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TowerliteError(f"{path}, line {number}: each line must be one JSON object")
        records.append(record)
        lines.append(number)
    columns = list(dict.fromkeys(k for r in records for k in r))
    return pd.DataFrame.from_records(records, columns=columns), lines
