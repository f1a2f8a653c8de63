"""Evaluators: plain functions of embeddings returning metric dicts.

agreement  how closely a model's geometry follows the teacher's on held-out texts:
           Spearman of pairwise cosines, top-10 neighbour overlap, and mean cosine to the
           teacher's own embedding when the model lives in the teacher's space.
retrieval  user history text → next liked item over the whole catalog (history excluded),
           Recall@k and NDCG@k.
"""

from __future__ import annotations

import numpy as np


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r  # cosines are continuous: ties are negligible


def spearman_pairwise(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman correlation between the pairwise cosines of two embeddings of the same texts."""
    iu = np.triu_indices(len(a), 1)
    x, y = _ranks((a @ a.T)[iu]), _ranks((b @ b.T)[iu])
    return float(np.corrcoef(x, y)[0, 1])


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean share of each text's k nearest neighbours (itself excluded) that both agree on."""
    k = min(k, len(a) - 1)

    def neighbours(e):
        s = e @ e.T
        np.fill_diagonal(s, -np.inf)
        return np.argsort(-s, axis=1)[:, :k]

    na, nb = neighbours(a), neighbours(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


def agreement(teacher: np.ndarray, student: np.ndarray, groups: list[str]) -> dict:
    """Per group (e.g. corpus source) and overall."""
    same_space = teacher.shape[1] == student.shape[1]
    groups = np.asarray(groups)
    out = {}
    for g in sorted(set(groups)):
        m = groups == g
        t, s = teacher[m], student[m]
        out[g] = {"texts": int(m.sum()), "spearman": round(spearman_pairwise(t, s), 4),
                  "top10_overlap": round(topk_overlap(t, s), 4),
                  "mean_cosine": round(float((t * s).sum(1).mean()), 4) if same_space else None}
    keys = ("spearman", "top10_overlap", "mean_cosine")
    out["all"] = {k: (round(float(np.mean([v[k] for v in out.values()])), 4)
                      if same_space or k != "mean_cosine" else None) for k in keys}
    return out


def retrieval(users: np.ndarray, items: np.ndarray, item_ids: list[str],
              cases: list[tuple[str, list[str], str]], k: int = 10) -> dict:
    """Recall@k and NDCG@k of the target among all items but the user's history."""
    pos = {item: i for i, item in enumerate(item_ids)}
    scores = users @ items.T
    hits, gains = [], []
    for row, (_, history, target) in enumerate(cases):
        s = scores[row].copy()
        s[[pos[h] for h in history]] = -np.inf
        rank = int((s > s[pos[target]]).sum())  # 0-based rank of the target
        hits.append(rank < k)
        gains.append(1.0 / np.log2(rank + 2) if rank < k else 0.0)
    return {f"recall@{k}": round(float(np.mean(hits)), 4), f"recall@{k}_ci95": bootstrap_ci(hits),
            f"ndcg@{k}": round(float(np.mean(gains)), 4), f"ndcg@{k}_ci95": bootstrap_ci(gains),
            "users": len(cases)}


def bootstrap_ci(values, n: int = 1000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of a mean over users."""
    v = np.asarray(values, dtype=np.float64)
    means = v[np.random.default_rng(seed).integers(0, len(v), (n, len(v)))].mean(1)
    return [round(float(x), 4) for x in np.percentile(means, [2.5, 97.5])]
