"""Book-Crossing (BX-*.csv: `;`-separated, latin-1, `\\"` for quotes inside fields).

Parsed with `escapechar="\\\\"`, all 271,379 book rows are read (a plain CSV reader splits 22
rows whose titles hold `\\"` or `&amp;`). Nothing is dropped: 118,605 ratings name ISBNs
that are not in BX-Books.csv, as in the published data; `known_items_only` filters them.
Ratings of 0 are implicit interactions (the book was handled, not rated).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from ..assets import ensure
from .records import INTERACTION_COLUMNS, ITEM_COLUMNS, InteractionData


def _read(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(path, sep=";", encoding="latin-1", escapechar="\\", keep_default_na=False,
                       **kw)


def _clean(col: pd.Series) -> pd.Series:
    return col.map(html.unescape).str.strip()


def load_bookcrossing(root: Path | None = None) -> InteractionData:
    """271,379 books, 278,858 users, 1,149,780 ratings (0 = implicit, 1-10 explicit)."""
    root = Path(root) if root else ensure("book-crossing")
    books = _read(root / "BX-Books.csv", dtype=str)
    year = pd.to_numeric(books["Year-Of-Publication"], errors="coerce").fillna(0).astype("int32")
    items = pd.DataFrame({
        "item_id": books["ISBN"], "domain": "book", "title": _clean(books["Book-Title"]),
        "year": year.where((year > 0) & (year <= 2025), 0), "genres": "",
        "author": _clean(books["Book-Author"]), "publisher": _clean(books["Publisher"]),
    })[ITEM_COLUMNS]
    ratings = _read(root / "BX-Book-Ratings.csv",
                    dtype={"User-ID": str, "ISBN": str, "Book-Rating": "float32"})
    inter = pd.DataFrame({"user_id": ratings["User-ID"], "item_id": ratings["ISBN"],
                          "rating": ratings["Book-Rating"], "timestamp": np.int64(-1)})
    users = _read(root / "BX-Users.csv", dtype=str).rename(
        columns={"User-ID": "user_id", "Location": "location", "Age": "age"})
    return InteractionData("bookcrossing", items, inter[INTERACTION_COLUMNS], users,
                           positive_threshold=6.0)



def known_items_only(data: InteractionData) -> pd.DataFrame:
    """The interactions whose ISBN is in the catalog (1,031,175 of 1,149,780)."""
    return data.interactions[data.interactions["item_id"].isin(data.items["item_id"])]
