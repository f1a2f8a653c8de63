"""MovieLens-1M from RecBole's atomic files (tab-separated, `field:type` headers).

In these files a movie's id is its title with year ("Heat (1995)"), unique across the
catalog, and a user's id carries RecBole's "1m_" prefix; both are kept as the catalog's ids.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..assets import ensure
from .records import INTERACTION_COLUMNS, ITEM_COLUMNS, InteractionData


def _read_atomic(path: Path, dtypes: dict) -> pd.DataFrame:
    df = pd.read_csv(path, sep="\t", dtype=dtypes, keep_default_na=False, quoting=3)
    df.columns = [c.split(":")[0] for c in df.columns]
    return df


def load_movielens(root: Path | None = None) -> InteractionData:
    """6,040 users, 3,883 movies, 1,000,209 ratings (1-5 stars, unix timestamps); none dropped."""
    root = Path(root) if root else ensure("movielens-1m")
    raw_items = _read_atomic(root / "ml-1m.item", {0: str, 1: str, 2: "int32", 3: str})
    items = pd.DataFrame({
        "item_id": raw_items["item_id"], "domain": "movie", "title": raw_items["movie_title"],
        "year": raw_items["release_year"].astype("int32"),
        "genres": raw_items["genre"].str.split().str.join("|"), "author": "", "publisher": "",
    })[ITEM_COLUMNS]
    inter = _read_atomic(root / "ml-1m.inter", {0: str, 1: str, 2: "float32", 3: "float64"})
    inter["timestamp"] = inter["timestamp"].astype("int64")
    users = _read_atomic(root / "ml-1m.user", {0: str, 1: "int32", 2: str, 3: "int32", 4: str})
    return InteractionData("movielens", items, inter[INTERACTION_COLUMNS], users,
                           positive_threshold=4.0)

