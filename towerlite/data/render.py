"""The text each tower sees. Every stage (distill, eval, deploy, bench) renders through here,
so an item is written the same way in training, in the served catalog and in evaluation.

    item:  "[movie] The American President (1995). Comedy|Drama|Romance"
           "[book] Clara Callan by Richard Bruce Wright (2001). HarperFlamingo Canada"
    user:  the user's recent liked items, newest first, joined by "; ", after an optional profile
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import pandas as pd

# MovieLens writes "American President, The" and "Postino, Il (The Postman)".
_TRAILING_ARTICLE = re.compile(
    r"^(.*?), (The|A|An|La|Le|Les|L'|Il|El|Das|Der|Die|Los|Las)( \(.*\))?$")


def display_title(title: str) -> str:
    m = _TRAILING_ARTICLE.match(title)
    if not m:
        return title
    article = m.group(2)
    sep = "" if article.endswith("'") else " "
    return f"{article}{sep}{m.group(1)}{m.group(3) or ''}"


def item_text(item: Mapping) -> str:
    """One item's text for the item tower, from a row with the ITEM_COLUMNS fields."""
    domain, title, year = item["domain"], str(item["title"]).strip(), int(item["year"] or 0)
    when = f" ({year})" if year else ""
    if domain == "movie":
        genres = f". {item['genres']}" if item.get("genres") else ""
        return f"[movie] {display_title(title)}{when}{genres}"
    if domain == "book":
        author = f" by {item['author']}" if item.get("author") else ""
        publisher = f". {item['publisher']}" if item.get("publisher") else ""
        return f"[book] {title}{author}{when}{publisher}"
    raise ValueError(f"no item text rendering for domain {domain!r}")


def item_texts(items: pd.DataFrame) -> list[str]:
    """item_text for every row of an items frame, in order."""
    return [item_text(row) for row in items.to_dict("records")]


def user_text(history: Sequence[Mapping], max_items: int = 10, profile: str | None = None) -> str:
    """The user tower's text: the last `max_items` of a history given oldest → newest,
    written newest first (so truncation at the encoder's max length drops the oldest)."""
    recent = history[-max(1, max_items):]
    return join_user_text([item_text(item) for item in recent], max_items, profile)


def join_user_text(history_texts: Sequence[str], max_items: int = 10,
                   profile: str | None = None) -> str:
    """user_text from already rendered item texts (oldest → newest)."""
    if max_items < 1:
        raise ValueError("max_items must be at least 1")
    recent = list(reversed(history_texts[-max_items:]))
    parts = ([profile.strip()] if profile and profile.strip() else []) + ["; ".join(recent)]
    text = ". ".join(p for p in parts if p)
    if not text:
        raise ValueError("a user needs a history or a profile to have a text")
    return text


def user_histories(interactions: pd.DataFrame,
                   min_rating: float | None = None) -> dict[str, list[str]]:

    """{user_id: item ids oldest → newest} (file order where timestamps are unknown)."""
    df = interactions if min_rating is None else interactions[interactions["rating"] >= min_rating]
    df = df.sort_values("timestamp", kind="stable")
    return {user: list(ids) for user, ids in df.groupby("user_id", sort=False)["item_id"]}
