"""The feedback file: what users did with their recommendations, folded into the next model
(`towerlite fold-in`). CSV (a header row) or JSON Lines, one interaction a line:

    user_id     the user's id (any string; the dataset's own ids for its users)
    item_id     an item of the served catalog
    event       like | rating | click | skip   (like counts; rating counts when ≥ the dataset's
                positive threshold, 4 of 5 for MovieLens; click and skip are kept, not trained)
    rating      a number, for event rating (empty otherwise)
    timestamp   when: Unix seconds, or ISO 8601 (2000-12-24T18:00:00Z); orders each user's likes

CSV or JSON Lines by suffix (.csv, .jsonl; towerlite.data.table_file reads both). Read whole and
checked before anything is trained: an empty file, a missing column, an unknown event, a rating
event without a number, a timestamp that does not parse or is in the future, an item the catalog
does not hold — each a TowerliteError naming the first offending lines.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from towerlite.errors import TowerliteError

from .table_file import read_rows

COLUMNS = ("user_id", "item_id", "event", "rating", "timestamp")
EVENTS = ("like", "rating", "click", "skip")
SHOWN = 5  # offending lines named in an error


def _lines(rows: pd.DataFrame, mask) -> str:
    bad = rows.index[mask].tolist()
    more = f" (and {len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
    return ", ".join(str(i) for i in bad[:SHOWN]) + more


def _read(path: Path) -> pd.DataFrame:
    rows, lines = read_rows(path, "feedback")
    if rows.empty:
        raise TowerliteError(f"{path}: no interactions (an empty feedback file)")
    return rows.set_index(pd.Index(lines, name="line"))


def read_feedback(path: str | Path, catalog: Collection[str], positive_threshold: float = 4.0,
                  known_users: Collection[str] = ()) -> pd.DataFrame:
    """The file's interactions, checked: columns user_id, item_id, event, rating (float, NaN
    when none), timestamp (Unix seconds, int), like (bool: what trains), indexed by line.
    `known_users`: the dataset's user ids; ids that are unknown but become known with the
    dataset's id prefix (MovieLens' `1m_`) are refused — such a user's held-out status would be
    read off the wrong id."""
    path = Path(path)
    rows = _read(path)
    missing = [c for c in COLUMNS if c not in rows.columns and c != "rating"]
    if missing:
        raise TowerliteError(f"{path}: missing column(s) {', '.join(missing)} (a feedback file "
                             f"has {', '.join(COLUMNS)})")
    if "rating" not in rows.columns:
        rows["rating"] = ""
    out = pd.DataFrame(index=rows.index)
    for column in ("user_id", "item_id", "event"):
        out[column] = rows[column].astype(str).str.strip()
        empty = out[column].isin(["", "nan", "None"])
        if empty.any():
            raise TowerliteError(f"{path}: empty {column} on line(s) {_lines(rows, empty)}")
    _check_user_ids(path, rows, out["user_id"], known_users)
    out["event"] = out["event"].str.lower()
    unknown = ~out["event"].isin(EVENTS)
    if unknown.any():
        raise TowerliteError(f"{path}: unknown event on line(s) {_lines(rows, unknown)} (events: "
                             f"{', '.join(EVENTS)})")
    rating = pd.to_numeric(rows["rating"].replace("", None), errors="coerce")
    no_number = (out["event"] == "rating") & rating.isna()
    if no_number.any():
        raise TowerliteError(f"{path}: event rating without a numeric rating on line(s) "
                             f"{_lines(rows, no_number)}")
    out["rating"] = rating.astype(float)
    out["timestamp"] = _timestamps(path, rows)
    not_in_catalog = ~out["item_id"].isin(set(catalog))
    if not_in_catalog.any():
        names = ", ".join(dict.fromkeys(out["item_id"][not_in_catalog]))
        raise TowerliteError(
            f"{path}: {int(not_in_catalog.sum())} interaction(s) with items the catalog does not "
            f"hold on line(s) {_lines(rows, not_in_catalog)} ({names[:200]}); add them with "
            "`towerlite catalog update` and a tower trained on that catalog first")
    out["like"] = (out["event"] == "like") | \
        ((out["event"] == "rating") & (out["rating"] >= positive_threshold))
    return out


def _check_user_ids(path: Path, rows: pd.DataFrame, users: pd.Series,
                    known_users: Collection[str]) -> None:
    known = set(known_users)
    if not known:
        return
    prefix = os.path.commonprefix(sorted(known)[:1] + sorted(known)[-1:])
    prefix = prefix[:prefix.rfind("_") + 1] if "_" in prefix else ""
    if not prefix:
        return
    bare = users.map(lambda u: u not in known and f"{prefix}{u}" in known).astype(bool)
    if bare.any():
        raise TowerliteError(f"{path}: user ids written without the dataset's prefix "
                             f"{prefix!r} on line(s) {_lines(rows, bare)} (e.g. "
                             f"{users[bare].iloc[0]!r} for {prefix + users[bare].iloc[0]!r}): "
                             "write the dataset's own ids")


def _timestamps(path: Path, rows: pd.DataFrame) -> pd.Series:
    raw = rows["timestamp"].astype(str).str.strip()
    numeric = pd.to_numeric(raw, errors="coerce")
    parsed = pd.to_datetime(raw.where(numeric.isna()), errors="coerce", utc=True, format="ISO8601")
    seconds = numeric.where(numeric.notna(), parsed.astype("int64") // 10**9)
    seconds = seconds.where(numeric.notna() | parsed.notna())
    bad = seconds.isna() | (seconds < 0)
    if bad.any():
        raise TowerliteError(f"{path}: timestamp not Unix seconds or ISO 8601 on line(s) "
                             f"{_lines(rows, bad)}")
    now = datetime.now(timezone.utc).timestamp()
    future = seconds > now + 86_400
    if future.any():
        raise TowerliteError(f"{path}: timestamp in the future on line(s) {_lines(rows, future)}")
    return seconds.astype("int64")
