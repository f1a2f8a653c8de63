"""What a recommender team ships without text: the yardsticks the text towers stand beside.

popularity     items ranked by how many users liked them in the training part
co-occurrence  item-to-item: an item scores the sum, over the user's history, of its cosine
               co-occurrence with each history item (liked by the same users), the classic
               item-kNN recommender without a neighbour cut
Both learn from `Cases.train_likes` only (the evaluated targets are not in it) and return
`towerlite.evaluation.metrics.ScoreBlock`s, so they are ranked exactly like the towers.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from towerlite.evaluation.metrics import ScoreBlock

from .cases import Cases


def _likes_matrix(cases: Cases) -> sparse.csr_matrix:
    rows = np.repeat(np.arange(len(cases.train_likes)), [len(t) for t in cases.train_likes])
    cols = (np.concatenate([np.asarray(t, np.int64) for t in cases.train_likes]) if rows.size
            else rows)
    likes = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                              shape=(len(cases.train_likes), len(cases.item_ids)))
    likes.data[:] = 1.0  # a user liking an item twice still counts once
    return likes


def popularity(cases: Cases) -> ScoreBlock:
    counts = np.asarray(_likes_matrix(cases).sum(0), dtype=np.float32).ravel()
    return lambda start, stop: np.broadcast_to(counts, (stop - start, len(counts)))


def co_occurrence(cases: Cases) -> ScoreBlock:
    likes = _likes_matrix(cases)
    norm = np.asarray(likes.sum(0), dtype=np.float32).ravel()
    inv_sqrt = sparse.diags(
        np.where(norm > 0, 1.0 / np.sqrt(np.maximum(norm, 1)), 0.0).astype(np.float32))
    likes_scaled = (likes @ inv_sqrt).tocsr()  # columns scaled by 1/sqrt(likes): cosine
    likes_t = likes.T.tocsr()
    history = sparse.csr_matrix(
        (np.ones(sum(map(len, cases.histories)), np.float32),
         (np.repeat(np.arange(len(cases.histories)), [len(h) for h in cases.histories]),
          np.concatenate([np.asarray(h, np.int64) for h in cases.histories]))),
        shape=(len(cases.histories), len(cases.item_ids)))
    history_scaled = (history @ inv_sqrt).tocsr()

    def block(start: int, stop: int) -> np.ndarray:
        # (users, training users): Σ_i∈history x_ui / sqrt(n_i)
        users_overlap = history_scaled[start:stop] @ likes_t
        return np.asarray((users_overlap @ likes_scaled).todense(), dtype=np.float32)

    return block



BASELINES = {"popularity": popularity, "co-occurrence": co_occurrence}
