"""The corpus split every stage agrees on: a text is held out by a hash of its text alone, so
distillation never trains on what export's parity gate and distill's evaluation measure on,
whatever order or subset of the corpus a stage loads."""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Iterable

from .records import TextRecord

HELDOUT_PER_10K = 200  # 2% of every source is never trained on


def is_heldout(text: str) -> bool:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < HELDOUT_PER_10K


def balanced_sample(records: Iterable[TextRecord], per_source: int, seed: int = 0,
                    heldout: bool = True) -> list[TextRecord]:
    """Up to `per_source` records of every source, spread round-robin over its domains (so
    every domain is present when per_source allows), from the held-out part (or the
    training part). Deterministic for a seed; ordered by source."""
    groups: dict[str, dict[str, list[TextRecord]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        if rec.text.strip() and is_heldout(rec.text) == heldout:
            groups[rec.source][rec.domain].append(rec)
    rng = random.Random(seed)
    out = []
    for source in sorted(groups):
        pools = [rng.sample(g, len(g)) for _, g in sorted(groups[source].items())]
        picked: list[TextRecord] = []
        while len(picked) < per_source and any(pools):
            for pool in pools:
                if pool and len(picked) < per_source:
                    picked.append(pool.pop())
        out.extend(picked)
    return out


HELDOUT_USERS_PER_10K = 1_000  # 10% of users: evaluation only, never rendered into training text


def is_heldout_user(user_id: str) -> bool:
    """A user held out of every training stage, by a hash of the id alone."""
    digest = hashlib.blake2b(f"user:{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 < HELDOUT_USERS_PER_10K


def leave_last_out(histories: dict[str, list[str]], max_history: int = 10,
                   min_history: int = 1) -> list[tuple[str, list[str], str]]:
    """(user, history, target) per user: the target is the last liked item, the history the
    up to `max_history` liked items before it (oldest → newest; the target never in it)."""
    cases = []
    for user, items in histories.items():
        if len(items) < min_history + 1:
            continue
        target = items[-1]
        history = [i for i in items[:-1] if i != target][-max_history:]
        if len(history) >= min_history:
            cases.append((user, history, target))
    return cases


def ordered_likes(data, seed: int = 0) -> dict[str, list[str]]:
    """{user: liked item ids in the order leave-last-out reads them}: by time where the
    dataset has timestamps (MovieLens), else shuffled by a seed and the user id (Book-Crossing's
    file order is sorted by ISBN, which would make the "last" item an alphabetical accident).
    Only items in the catalog count; a repeated rating of one item counts once."""
    from .render import user_histories

    inter = data.interactions[data.interactions["item_id"].isin(data.items["item_id"])]
    likes = {u: list(dict.fromkeys(items)) for u, items in
             user_histories(inter, data.positive_threshold).items()}
    if (inter["timestamp"] < 0).all():
        for user, items in likes.items():
            random.Random(f"{seed}:{user}").shuffle(items)
    return likes
