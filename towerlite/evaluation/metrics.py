"""Next-item retrieval metrics, shared by distill's built-in evaluation and `towerlite eval`.

Each case is one user: a score for every catalog item, the user's history masked out, and one
target. From the target's rank come Recall@k (the target in the top k), NDCG@k (one relevant
item, so the gain is 1/log2(rank + 2) inside k) and MRR (1/(rank + 1)), all 0-based ranks.

Ties are scored at their expectation under a random order among the tied items: a text
tower's cosines almost never tie, but popularity counts tie by the thousand, and counting only
strictly better items would hand a tied target the best place among them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ScoreBlock = Callable[[int, int], np.ndarray]  # (first user, stop) → (users, items) scores


def dot_scores(users: np.ndarray, items: np.ndarray) -> ScoreBlock:
    return lambda a, b: users[a:b] @ items.T


def _masked(block: np.ndarray, rows: Sequence[Sequence[int]]) -> np.ndarray:
    s = np.array(block, dtype=np.float32)  # a copy: the caller's scores stay as they are
    for r, cols in enumerate(rows):
        s[r, list(cols)] = -np.inf
    return s


def target_ranks(scores: ScoreBlock, targets: Sequence[int], exclude: Sequence[Sequence[int]],
                 chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(items scoring above the target, other items tying with it) per user, `exclude[u]`
    (the history) left out of the candidates."""
    targets = np.asarray(targets, dtype=np.int64)
    above, tied = np.zeros(len(targets), np.int64), np.zeros(len(targets), np.int64)
    for start in range(0, len(targets), chunk):
        stop = min(start + chunk, len(targets))
        block = _masked(scores(start, stop), exclude[start:stop])
        target_score = block[np.arange(stop - start), targets[start:stop]][:, None]
        above[start:stop] = (block > target_score).sum(1)
        tied[start:stop] = (block == target_score).sum(1) - 1
    return above, tied


def top_k(scores: ScoreBlock, n: int, exclude: Sequence[Sequence[int]], k: int = 10,
          chunk: int = 256) -> np.ndarray:
    """(n, k) item indices, best first, history left out."""
    out = []
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        block = _masked(scores(start, stop), exclude[start:stop])
        part = np.argpartition(-block, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(block, part, 1), axis=1, kind="stable")
        out.append(np.take_along_axis(part, order, 1))
    return np.concatenate(out) if out else np.zeros((0, k), np.int64)


def top_k_overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per user: the share of one top-k list that is also in the other."""
    return np.array([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)])


def per_user(above: np.ndarray, tied: np.ndarray, ks: Sequence[int] = (10, 50),
             ndcg_k: int = 10) -> dict[str, np.ndarray]:
    """Each metric per user, expected over random orders of the tied items: the target sits at
    one of the ranks above … above + tied with equal chance."""
    n_max = int((above + tied).max(initial=0)) + 2
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n_max + 1))])
    places = tied + 1.0
    out = {}
    for k in ks:
        out[f"recall@{k}"] = np.clip(k - above, 0, places) / places
    # disc[j]: the discounted gain of ranks < j
    disc = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(ndcg_k) + 2))])

    lo, hi = np.minimum(above, ndcg_k), np.minimum(above + tied + 1, ndcg_k)
    out[f"ndcg@{ndcg_k}"] = (disc[hi] - disc[lo]) / places
    out["mrr"] = (harmonic[above + tied + 1] - harmonic[above]) / places
    return out


def summarize(values: dict[str, np.ndarray], mask: np.ndarray | None = None, seed: int = 0) -> dict:
    """Mean and 95% bootstrap interval of every metric (over the users in `mask`)."""
    out = {}
    for name, v in values.items():
        v = v if mask is None else v[mask]
        out[name] = round(float(v.mean()), 4) if len(v) else None
        out[f"{name}_ci95"] = bootstrap_ci(v, seed=seed) if len(v) else None
    out["users"] = int(len(next(iter(values.values()))) if mask is None else mask.sum())
    return out


def paired_difference(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
                      seed: int = 0) -> dict:
    """Mean and 95% bootstrap interval of a − b, two rows' per-user values on the same users
    (those in `mask`): the test of "a beats b" — two overlapping marginal intervals can still
    hide a sure difference."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d if mask is None else d[mask]
    return {"mean": round(float(d.mean()), 4) if len(d) else None,
            "ci95": bootstrap_ci(d, seed=seed) if len(d) else None}


def tower_minus_row(tower: np.ndarray, row: np.ndarray, cold: np.ndarray) -> dict:
    """A report row's `tower_minus_this_recall@10`: the tower's per-user Recall@10 minus the
    row's, paired, over all users and over the cold-start ones."""
    return {"all": paired_difference(tower, row), "cold_start": paired_difference(tower, row, cold)}


def bootstrap_ci(values, n: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of a mean over users."""
    v = np.asarray(values, dtype=np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    return [round(float(x), 4) for x in np.percentile(means, [2.5, 97.5])]
