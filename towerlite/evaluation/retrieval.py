"""Evaluators: plain functions of embeddings returning metric dicts.

agreement  how closely a model's geometry follows the teacher's on held-out texts:
           Spearman of pairwise cosines, top-10 neighbour overlap, and mean cosine to the
           teacher's own embedding when the model lives in the teacher's space.
retrieval  user history text → next liked item over the whole catalog (history excluded),
           Recall@k, NDCG@k, MRR (towerlite.evaluation.metrics), and the overlap of the model's
           top-k with the teacher's: how close it comes to serving what the teacher would.
"""

from __future__ import annotations

import numpy as np

from towerlite.evaluation.metrics import (
    bootstrap_ci,
    dot_scores,
    per_user,
    summarize,
    target_ranks,
    top_k,
    top_k_overlap,
)


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

    return float(top_k_overlap(neighbours(a), neighbours(b)).mean())


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


def _case_rows(item_ids: list[str], cases) -> tuple[list[int], list[list[int]]]:
    pos = {item: i for i, item in enumerate(item_ids)}
    return [pos[t] for *_, t in cases], [[pos[h] for h in history] for _, history, _ in cases]


def recommended(users: np.ndarray, items: np.ndarray, item_ids: list[str], cases,
                k: int = 10) -> np.ndarray:

    """Each user's top-k item indices (history excluded): what this tower pair would serve."""
    _, exclude = _case_rows(item_ids, cases)
    return top_k(dot_scores(users, items), len(cases), exclude, k)


def retrieval(users: np.ndarray, items: np.ndarray, item_ids: list[str],
              cases: list[tuple[str, list[str], str]], k: int = 10,
              teacher_top: np.ndarray | None = None) -> dict:
    """Recall@k, NDCG@k and MRR of the target among all items but the user's history; with
    the teacher's own top-k lists, also how much of them this model serves too."""
    targets, exclude = _case_rows(item_ids, cases)
    scores = dot_scores(users, items)
    out = summarize(per_user(*target_ranks(scores, targets, exclude), ks=(k,), ndcg_k=k))
    if teacher_top is not None:
        overlap = top_k_overlap(top_k(scores, len(cases), exclude, k), teacher_top)
        out[f"teacher_top{k}_overlap"] = round(float(overlap.mean()), 4)
        out[f"teacher_top{k}_overlap_ci95"] = bootstrap_ci(overlap)
    return out
