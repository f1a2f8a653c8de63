"""The evaluation cases of one dataset: who is evaluated, on which target, against which items.

Users: the held-out 10% (`towerlite.data.splits.is_heldout_user`), never seen by distillation or
fine-tuning. Each one's liked items are read in `ordered_likes` order; the last is the target,
the up to `max_history` before it render the user text (`towerlite.data.render.user_text`, the
rendering every stage uses). Candidates: the dataset's catalog (or a seeded sample of it that
keeps every evaluated user's items) minus everything the user liked before the target.

The training part, which the baselines learn from and cold start is counted in: every liked
item of every user except the evaluated users' targets. The sequential models (SASRec, the
history tower) learn from the training users' sequences alone: no held-out user is read.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from towerlite.errors import TowerliteError

DOMAIN_OF = {"movielens": "movie", "bookcrossing": "book"}


@dataclass
class Cases:
    dataset: str
    domain: str
    item_ids: list[str]  # the candidate catalog, in the scorer's order (serving.catalog)
    item_texts: list[str]
    users: list[str]
    histories: list[list[int]]  # catalog rows rendered into the user text, oldest → newest
    seen: list[list[int]]  # every item liked before the target: left out of the candidates
    targets: np.ndarray  # catalog row of each user's target
    user_texts: list[str]
    train_likes: list[list[int]] = field(repr=False)  # catalog rows liked, per training-part user
    target_counts: np.ndarray = field(repr=False)  # other likes of each target in the training part
    # catalog rows liked by each training user (not held out), oldest → newest: what the
    # sequential models (SASRec, the history tower) learn from; held-out users are never read
    train_sequences: list[list[int]] = field(default_factory=list, repr=False)
    settings: dict = field(default_factory=dict)


def _sample_catalog(items, keep: set[str], size: int, seed: int):
    others = sorted(set(items["item_id"]) - keep)
    extra = random.Random(seed).sample(others, max(0, min(len(others), size - len(keep))))
    return items[items["item_id"].isin(keep | set(extra))]


def build_cases(dataset: str, users: int = 1000, max_history: int = 10, seed: int = 0,
                catalog_items: int = 0, min_history: int = 1) -> Cases:
    """`users`: how many held-out users (0 = all of them); `catalog_items`: 0 = the whole
    catalog."""
    from towerlite.data import load_dataset
    from towerlite.data.catalog import prepare_items
    from towerlite.data.render import user_text
    from towerlite.data.splits import is_heldout_user, leave_last_out, ordered_likes

    if max_history < 1 or min_history < 1 or users < 0 or catalog_items < 0:
        raise TowerliteError("max_history and min_history must be at least 1; users and "
                             "catalog_items at least 0")
    data = load_dataset(dataset)
    likes = ordered_likes(data, seed)
    held = {u: items for u, items in likes.items() if is_heldout_user(u)}
    cases = leave_last_out(held, max_history, min_history)
    if not cases:
        raise TowerliteError(f"{dataset}: no held-out user has {min_history + 1} liked items")
    eligible = len(cases)
    if users and len(cases) > users:
        cases = sorted(random.Random(seed).sample(cases, users))
    evaluated = {u for u, _, _ in cases}
    items = data.items
    if catalog_items and catalog_items < len(items):
        needed = {i for _, history, target in cases for i in (*history, target)}
        items = _sample_catalog(items, needed, catalog_items, seed)
    catalog = prepare_items(items)
    row = {item: r for r, item in enumerate(catalog["item_id"])}
    by_id = data.items.set_index("item_id", drop=False)
    train = [[row[i] for i in (liked[:-1] if u in evaluated else liked) if i in row]
             for u, liked in likes.items()]
    counts = np.bincount([r for liked in train for r in liked], minlength=len(catalog))
    targets = np.array([row[t] for _, _, t in cases])
    return Cases(
        dataset=dataset, domain=DOMAIN_OF[dataset], item_ids=list(catalog["item_id"]),
        item_texts=list(catalog["text"]), users=[u for u, _, _ in cases],
        histories=[[row[i] for i in h] for _, h, _ in cases], targets=targets,
        seen=[[row[i] for i in held[u][:-1] if i in row] for u, _, _ in cases],
        user_texts=[user_text(by_id.loc[h].to_dict("records"), max_history) for _, h, _ in cases],
        train_likes=[t for t in train if t], target_counts=counts[targets],
        train_sequences=[rows for (user, _), rows in zip(likes.items(), train)
                         if rows and not is_heldout_user(user)],
        settings={"users": len(cases), "held_out_users_eligible": eligible,
                  "max_history": max_history, "min_history": min_history, "seed": seed,
                  "catalog_items": len(catalog), "catalog_full": len(data.items) == len(catalog),
                  "order": ("time" if (data.interactions["timestamp"] >= 0).any()
                            else "seeded shuffle"),

                  "positive_rating": data.positive_threshold})
