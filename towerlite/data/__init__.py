"""Loaders giving the rest of the project one shape of data (see records.py)."""

from ..errors import TowerliteError
from .bookcrossing import known_items_only, load_bookcrossing
from .corpus import CORPUS_SOURCES, domain_counts, load_corpus
from .movielens import load_movielens
from .records import INTERACTION_COLUMNS, ITEM_COLUMNS, InteractionData, TextRecord
from .render import item_text, item_texts, user_histories, user_text

DATASETS = {"movielens": load_movielens, "bookcrossing": load_bookcrossing}


def load_dataset(name: str) -> InteractionData:
    try:
        loader = DATASETS[name]
    except KeyError:
        raise TowerliteError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}") from None
    return loader()


__all__ = ["CORPUS_SOURCES", "DATASETS", "INTERACTION_COLUMNS", "ITEM_COLUMNS", "InteractionData",
           "TextRecord", "domain_counts", "item_text", "item_texts", "known_items_only",
           "load_corpus", "load_dataset", "load_bookcrossing", "load_movielens", "user_histories",
           "user_text"]

