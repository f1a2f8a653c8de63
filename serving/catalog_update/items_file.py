"""Reading an update's inputs: the items file (CSV or JSON Lines) or frame, checked row by row,
and the ids to remove."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.data.table_file import JSONL_SUFFIXES, read_rows
from towerlite.errors import TowerliteError

from .. import catalog as cat

ITEM_COLUMNS = ("item_id", "domain", "title", "year", "genres", "author", "publisher")
REQUIRED_COLUMNS = ("item_id", "domain", "title")


def read_items(path: str | Path) -> pd.DataFrame:
    """The items of a CSV or JSON Lines file as an ITEM_COLUMNS frame, checked row by row."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", *JSONL_SUFFIXES) and path.is_file():
        raise TowerliteError(f"{path}: items must be CSV (.csv) or JSON Lines (.jsonl), one item "
                             f"a row with the columns {', '.join(ITEM_COLUMNS)}")
    rows, lines = read_rows(path, "items")
    return _check_items(path, rows, lines)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, list):  # JSON genres as a list: the loaders join them with "|"
        return "|".join(str(v).strip() for v in value)
    return str(value).strip()


def _check_items(path: Path, rows: pd.DataFrame, lines: list[int]) -> pd.DataFrame:
    """Columns known and present, ids unique and non-empty, years whole numbers, every row
    renderable by item_text (its domain is one the towers know)."""
    from towerlite.data.render import item_text

    unknown = [c for c in rows.columns if c not in ITEM_COLUMNS]
    if unknown:
        raise TowerliteError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; the "
                             f"item columns are {', '.join(ITEM_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise TowerliteError(f"{path}: missing column(s) {', '.join(missing)} (required: "
                             f"{', '.join(REQUIRED_COLUMNS)}; optional: year, genres, author, "
                             "publisher)")
    out = []
    for line, record in zip(lines, rows.to_dict("records")):
        item = {c: _cell(record.get(c)) for c in ITEM_COLUMNS}
        where = f"{path}, line {line}"
        if not item["item_id"]:
            raise TowerliteError(f"{where}: item_id is empty")
        if not item["title"]:
            raise TowerliteError(f"{where} ({item['item_id']!r}): title is empty")
        try:
            item["year"] = int(float(item["year"])) if item["year"] else 0
        except (ValueError, OverflowError):
            raise TowerliteError(f"{where} ({item['item_id']!r}): year {item['year']!r} is not "
                                 "a whole number") from None
        try:
            item_text(item)
        except ValueError as exc:
            raise TowerliteError(f"{where} ({item['item_id']!r}): {exc}") from None
        out.append(item)
    frame = pd.DataFrame(out, columns=list(ITEM_COLUMNS))
    dupes = frame["item_id"][frame["item_id"].duplicated()].unique().tolist()
    if dupes:
        raise TowerliteError(f"{path}: item id(s) given more than once: {preview(dupes)}")
    return frame


def read_ids(path: str | Path) -> list[str]:
    """Item ids to remove: one a line, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise TowerliteError(f"{path}: no such file of item ids to remove")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TowerliteError(f"{path}: not UTF-8 text") from None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def preview(values: Sequence[str], limit: int = 5) -> str:
    """The first `limit` values for a message, and how many there are in all."""
    shown = ", ".join(map(repr, list(values)[:limit]))
    return shown + (f" … ({len(values):,} in all)" if len(values) > limit else "")


def read_inputs(items, remove) -> tuple[pd.DataFrame, list[str], dict]:
    """(checked items frame, ids to remove, where they came from) of `update`'s `items` (a file,
    a frame or None) and `remove` (a file of ids, a list or None)."""
    source = {}
    if items is None:
        frame = pd.DataFrame(columns=list(ITEM_COLUMNS))
    elif isinstance(items, pd.DataFrame):
        frame = _check_items(Path("items frame"), items, [i + 1 for i in range(len(items))])
        source["items"] = f"a frame of {len(items)} rows"
    else:
        frame = read_items(items)
        source["items"] = str(Path(items).resolve())
        source["items_sha256"] = cat.sha256_file(Path(items))
    if remove is None:
        removed = []
    elif isinstance(remove, (str, Path)):
        removed = read_ids(remove)
        source["remove"] = str(Path(remove).resolve())
    else:
        removed = list(dict.fromkeys(str(r) for r in remove))
    if frame.empty and not removed:
        raise TowerliteError("nothing to update: give items (new or changed) and/or ids to remove")
    both = sorted(set(frame["item_id"]) & set(removed))
    if both:
        raise TowerliteError(f"id(s) both given as items and to remove: {preview(both)}")
    return frame, removed, source
