"""Fine-tuning examples from the interactions: (user history text → next liked item).

The split is the eval issue's: the held-out 10% of users (`is_heldout_user`) are never read
here, so no evaluation user's history or target reaches training. Likes are read in
`ordered_likes` order (MovieLens by time, Book-Crossing by a seeded shuffle), exactly as
`towerlite eval` reads them. A batch is a pure function of (seed, step): resumable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from towerlite.data.render import join_user_text
from towerlite.errors import TowerliteError

log = logging.getLogger(__name__)


@dataclass
class Interactions:
    name: str
    item_ids: list[str]  # the dataset's catalog
    item_texts: list[str]
    users: list[str]  # the training users (never a held-out one)
    likes: list[np.ndarray]  # per training user: catalog rows liked, in order (≥ 2 of them)
    log_q: np.ndarray  # per item: log of its chance to be a sampled positive (logQ correction)


@dataclass
class Batch:
    dataset: str
    users: np.ndarray  # indices into Interactions.likes
    user_texts: list[str]
    positives: np.ndarray  # catalog row of each user's next liked item
    seen: list[set[int]]  # rows each user liked before it: never its negatives


def load_interactions(name: str, seed: int = 0) -> Interactions:
    from towerlite.data import load_dataset
    from towerlite.data.render import item_texts
    from towerlite.data.splits import is_heldout_user, ordered_likes

    data = load_dataset(name)
    items = data.items.reset_index(drop=True)
    row = {item: r for r, item in enumerate(items["item_id"])}
    train = {user: liked for user, liked in ordered_likes(data, seed).items()
             if not is_heldout_user(user) and len(liked) >= 2}
    likes = [np.array([row[i] for i in liked], dtype=np.int64) for liked in train.values()]
    if not likes:
        raise TowerliteError(f"{name}: the training split is empty (no training user has two "
                             "liked items)")
    log.info(f"{name}: {len(likes):,} training users, {sum(map(len, likes)):,} likes, "
             f"{len(items):,} items")
    return Interactions(name, list(items["item_id"]), item_texts(items), list(train), likes,
                        _log_q(likes, len(items)))


def _log_q(likes: list[np.ndarray], n_items: int) -> np.ndarray:
    """A user is drawn uniformly, then a position 1..n-1 uniformly: an item's chance to be the
    positive. In-batch negatives are drawn by the same law, so popular items are over-sampled
    as negatives; subtracting log q from their logits undoes that (Yi et al., RecSys 2019)."""
    q = np.zeros(n_items)
    for liked in likes:
        np.add.at(q, liked[1:], 1.0 / (len(liked) - 1))
    q /= len(likes)
    return np.log(np.maximum(q, 1e-12)).astype(np.float32)


def sample_batch(data: Interactions, size: int, history_items: int,
                 rng: np.random.Generator) -> Batch:

    """`size` distinct training users, each cut at a random position: the liked items before
    the cut render the user text, the one at the cut is the positive."""
    users = rng.choice(len(data.likes), min(size, len(data.likes)), replace=False)
    texts, positives, seen = [], [], []
    for u in users:
        liked = data.likes[u]
        cut = int(rng.integers(1, len(liked)))
        history = liked[:cut]
        recent = history[-history_items:]
        texts.append(join_user_text([data.item_texts[r] for r in recent], history_items))
        positives.append(int(liked[cut]))
        seen.append(set(history.tolist()))
    return Batch(data.name, users, texts, np.array(positives), seen)


def step_batch(datasets: list[Interactions], weights: list[float], size: int, history_items: int,
               seed: int, step: int) -> Batch:
    """Global batch `step`: one dataset (drawn by weight), so in-batch negatives are items of
    the same domain — the hard ones; a domain tag alone would tell the others apart."""
    rng = np.random.default_rng([seed, step])
    p = np.asarray(weights, dtype=float) / sum(weights)
    dataset = datasets[int(rng.choice(len(datasets), p=p))]
    return sample_batch(dataset, size, history_items, rng)



def valid_negatives(batch: Batch, columns: np.ndarray) -> np.ndarray:
    """(users × columns) True where the column's item is a fair negative for the user: neither
    its positive (a duplicate in the batch, or its copy in the bank) nor anything it liked
    before (pushing those down would teach "not what you liked")."""
    cols = np.asarray(columns)
    ok = np.ones((len(batch.positives), len(cols)), dtype=bool)
    for i, (pos, seen) in enumerate(zip(batch.positives, batch.seen)):
        ok[i] = ~np.isin(cols, list(seen | {int(pos)}))
    return ok
