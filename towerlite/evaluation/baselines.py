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
    cols = np.concatenate([np.asarray(t, np.int64) for t in cases.train_likes]) if rows.size else rows
    m = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                          shape=(len(cases.train_likes), len(cases.item_ids)))
    m.data[:] = 1.0  # a user liking an item twice still counts once
    return m


def popularity(cases: Cases) -> ScoreBlock:
    counts = np.asarray(_likes_matrix(cases).sum(0), dtype=np.float32).ravel()
    return lambda a, b: np.broadcast_to(counts, (b - a, len(counts)))


def co_occurrence(cases: Cases) -> ScoreBlock:
    x = _likes_matrix(cases)
    norm = np.asarray(x.sum(0), dtype=np.float32).ravel()
    inv = sparse.diags(np.where(norm > 0, 1.0 / np.sqrt(np.maximum(norm, 1)), 0.0).astype(np.float32))
    xn = (x @ inv).tocsr()  # columns scaled by 1/sqrt(likes): cosine co-occurrence
    x_t = x.T.tocsr()
    hist = sparse.csr_matrix(
        (np.ones(sum(map(len, cases.histories)), np.float32),
         (np.repeat(np.arange(len(cases.histories)), [len(h) for h in cases.histories]),
          np.concatenate([np.asarray(h, np.int64) for h in cases.histories]))),
        shape=(len(cases.histories), len(cases.item_ids)))
    hist_n = (hist @ inv).tocsr()

    def block(a: int, b: int) -> np.ndarray:
        users_overlap = hist_n[a:b] @ x_t  # (users, training users): Σ_i∈history x_ui / sqrt(n_i)
        return np.asarray((users_overlap @ xn).todense(), dtype=np.float32)

    return block


BASELINES = {"popularity": popularity, "co-occurrence": co_occurrence}
