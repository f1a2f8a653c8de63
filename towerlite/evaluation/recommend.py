"""One evaluation: every tower setting and baseline on the same cases, in one report.

Rows, in order: the towers as given (user and item texts by the same model), then for every
non-teacher tower in the teacher's space the asymmetric setting (items by the teacher offline,
users by that tower online), then the baselines. Each row: Recall@10, Recall@50, NDCG@10, MRR
with 95% bootstrap intervals, the same on the cold-start slice, and each metric as a share of
the teacher's. With history towers, every other row also carries the first tower's Recall@10
minus its own, paired on the same users (all and cold): overlapping marginal intervals can
hide a sure difference.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from towerlite.evaluation.metrics import (
    dot_scores,
    per_user,
    summarize,
    target_ranks,
    tower_minus_row,
)

from .baselines import BASELINES
from .cases import Cases
from .towers import Tower

log = logging.getLogger(__name__)

METRICS = ("recall@10", "recall@50", "ndcg@10", "mrr")


def user_metrics(cases: Cases, scores) -> dict[str, np.ndarray]:
    """Each held-out user's metrics (metrics.per_user) under `scores`."""
    above, tied = target_ranks(scores, cases.targets, cases.seen)
    return per_user(above, tied, ks=(10, 50), ndcg_k=10)


def metric_rows(cases: Cases, scores, cold: np.ndarray) -> tuple[dict, dict]:
    values = user_metrics(cases, scores)
    return summarize(values), summarize(values, cold)


def _row(cases: Cases, scores, cold, recall: dict, label: str, **about) -> dict:
    """A report row; its users' Recall@10 kept in `recall` under `label`, for pairing."""
    started = time.perf_counter()
    values = user_metrics(cases, scores)
    recall[label] = values["recall@10"]
    return {**about, "metrics": summarize(values), "cold_start": summarize(values, cold),
            "rank_s": round(time.perf_counter() - started, 1)}


def _paired(rows: dict, recall: dict, tower: str, cold: np.ndarray) -> None:
    """The history tower's Recall@10 minus every other row's, on the same users."""
    for label, row in rows.items():
        if label != tower:
            row["tower_minus_this_recall@10"] = {
                "tower": tower, **tower_minus_row(recall[tower], recall[label], cold)}


def _kept(rows: dict, teacher: str | None) -> None:
    if teacher is None:
        return
    ref = rows[teacher]["metrics"]
    for row in rows.values():
        row["kept_vs_teacher"] = {
            metric: (round(100 * row["metrics"][metric] / ref[metric], 1) if ref[metric] else None)
            for metric in METRICS}


def evaluate(cases: Cases, towers: list[Tower], baselines: bool = True, cold_max: int = 2,
             sasrec_epochs: int = 0, history_towers: tuple = ()) -> dict:
    """`sasrec_epochs`: also train the ID-based SASRec yardstick on the cases' training users
    (0: not); `history_towers`: saved history towers (towerlite.sequential.SavedTower) to rank
    through their ONNX graphs, their item text embedded by their own item model."""
    cold = cases.target_counts <= cold_max
    rows, emb, recall = {}, {}, {}
    for tower in towers:
        started = time.perf_counter()
        users = tower.embed(cases.user_texts, f"{cases.dataset} user texts")
        items = tower.embed(cases.item_texts, f"{cases.dataset} catalog")
        emb[tower.name, tower.runtime] = (users, items)
        label = f"{tower.name} ({tower.runtime})"
        rows[label] = _row(cases, dot_scores(users, items), cold, recall, label,
                           kind="text towers",
                           users_by=label, items_by=label, dim=int(users.shape[1]),
                           encode_s=round(time.perf_counter() - started, 1))
        log.info(f"{label}: Recall@10 {rows[label]['metrics']['recall@10']}")
    teacher = next((t for t in towers if t.name == "teacher"), None)
    if teacher is not None:
        teacher_items = emb[teacher.name, teacher.runtime][1]
        for tower in towers:
            users = emb[tower.name, tower.runtime][0]
            if tower is teacher or users.shape[1] != teacher_items.shape[1]:
                continue
            label = f"{tower.name} ({tower.runtime}) users × teacher items"
            rows[label] = _row(cases, dot_scores(users, teacher_items), cold, recall, label,
                               kind="asymmetric",
                               users_by=f"{tower.name} ({tower.runtime})",
                               items_by=f"teacher ({teacher.runtime})", dim=int(users.shape[1]))
    for tower in history_towers:
        from .sequential import saved
        from .towers import towers_of

        text = towers_of(tower.item_model)[0].embed(cases.item_texts, f"{cases.dataset} catalog") \
            if tower.config.use_text else None
        scores, about = saved(cases, tower, text)
        label = f"history tower, {tower.config.kind} ({tower.folder})"
        rows[label] = _row(cases, scores, cold, recall, label, kind="history tower",
                           users_by=label, items_by=label, **about)
        log.info(f"{label}: Recall@10 {rows[label]['metrics']['recall@10']}")
    if baselines:
        for name, build in BASELINES.items():
            rows[name] = _row(cases, build(cases), cold, recall, name, kind="baseline",
                              users_by=None, items_by=None)
            log.info(f"{name}: Recall@10 {rows[name]['metrics']['recall@10']}")
        if sasrec_epochs:
            from .sequential import sasrec

            scores, about = sasrec(cases, sasrec_epochs)
            rows["SASRec"] = _row(cases, scores, cold, recall, "SASRec", kind="baseline",
                                  users_by=None, items_by=None, **about)
            log.info(f"SASRec: Recall@10 {rows['SASRec']['metrics']['recall@10']}")

    _kept(rows, f"teacher ({teacher.runtime})" if teacher is not None else None)
    towers_ranked = [label for label, row in rows.items() if row["kind"] == "history tower"]
    if towers_ranked:
        _paired(rows, recall, towers_ranked[0], cold)
    return {"dataset": cases.dataset, "domain": cases.domain,
            "cases": {**cases.settings, "cold_start_max_other_likes": cold_max,
                      "cold_start_users": int(cold.sum())},
            "rows": rows}
