"""The shapes of data every stage shares."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# items: one row per item, the same columns for every dataset so catalogs concatenate.
#   year 0 = unknown; text fields a dataset lacks are "".
ITEM_COLUMNS = ["item_id", "domain", "title", "year", "genres", "author", "publisher"]
# interactions: one row per rating; timestamp -1 = unknown (Book-Crossing has none).
INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]


@dataclass(frozen=True)
class TextRecord:
    """One text of the multi-domain corpus: `domain` is its genre/topic, `source` its corpus."""

    text: str
    domain: str
    source: str


@dataclass
class InteractionData:
    """A recommendation dataset: items, who rated what, and the users' own attributes."""

    name: str
    items: pd.DataFrame  # ITEM_COLUMNS
    interactions: pd.DataFrame  # INTERACTION_COLUMNS
    users: pd.DataFrame  # user_id + the dataset's own user fields
    positive_threshold: float  # a rating >= this counts as "liked"

    def __repr__(self) -> str:
        return (f"InteractionData({self.name}: {len(self.items):,} items, "
                f"{len(self.users):,} users, {len(self.interactions):,} interactions)")

