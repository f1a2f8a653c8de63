"""The sequential rows of an evaluation: models that read a user's whole liked-item sequence.

    sasrec(cases, epochs)           the ID-based yardstick (towerlite.sequential, ID only),
                                    trained on the training users of these cases
    trained(cases, cfg, text)       any history-tower setting trained the same way (the parts
                                    table of `towerlite history`: text + ID, text only, ID only)
    saved(cases, tower, text)       a saved history tower (`towerlite history` output) through
                                    its ONNX graph, as the served model runs it
    text_mean(cases, text, max_len) the zero-shot history row: no training, no tokenizer
    validation(cfg, sequences)      the training users' split and the validator `train` chooses
                                    its epoch by (cfg.validation)

(The same tower through Triton: `towerlite.serving.served_quality.served_agreement`.)

Each reads a user's `Cases.seen` (every like before the target, oldest → newest; the newest
`max_len` of them) and returns a ScoreBlock over the cases' catalog, so it is ranked exactly
like the text towers and the other baselines.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import numpy as np

from towerlite.evaluation.metrics import ScoreBlock, dot_scores, per_user, target_ranks
from towerlite.sequential import (
    HistoryConfig,
    SavedTower,
    item_table,
    onnx_user_vectors,
    unit_rows,
    user_vectors,
)
from towerlite.sequential_train import split_validation, train

from .cases import Cases

log = logging.getLogger(__name__)

# SASRec trained as the history tower is (2 blocks, d=64, the newest 200 items, full-softmax
# cross-entropy, the same epochs): the reference setting was 50 items and 20 epochs
SASREC = HistoryConfig(use_text=False, use_ids=True, id_min_likes=1)


def validation(cfg: HistoryConfig, sequences: list[list[int]],
               domains: list[tuple[int, int]] | None = None, cold_max: int = 2):
    """(the sequences to train on, a validator for `train` or None): with cfg.validation, a
    seeded share of the training users' last likes (cfg.validation_users: the users whole) held
    back (split_validation) and ranked as the eval ranks (metrics.target_ranks: each history
    excluded; with `domains`, row ranges, only the target's domain's items are candidates). The
    validator gives their mean Recall@10, all and over the cold targets alone (`cold_max` or
    fewer likes in the sequences trained on: the eval's cold-start slice)."""
    if not cfg.validation:
        return sequences, None
    sequences, histories, targets = split_validation(sequences, cfg.validation, cfg.seed,
                                                     cfg.validation_users)
    likes = np.concatenate([np.asarray(s, np.int64) for s in sequences if s] or [np.zeros(0, int)])
    cold = np.bincount(likes, minlength=int(targets.max(initial=-1)) + 1)[targets] <= cold_max

    def validator(model) -> dict:
        model.eval()
        table = item_table(model)
        users = user_vectors(model, histories, cfg.max_len, table=table)

        def scores(a: int, b: int) -> np.ndarray:
            block = users[a:b] @ table.T
            for lo, hi in domains or ():
                outside = (targets[a:b] < lo) | (targets[a:b] >= hi)
                block[:, lo:hi][outside] = -np.inf
            return block

        above, tied = target_ranks(scores, targets, histories)
        recall = per_user(above, tied)["recall@10"] if len(targets) else np.zeros(0)
        return {"recall@10": float(recall.mean()) if len(recall) else 0.0,
                "cold_recall@10": float(recall[cold].mean()) if cold.any() else 0.0,
                "cold_targets": int(cold.sum()), "targets": len(targets)}

    return sequences, validator


def trained(cases: Cases, cfg: HistoryConfig, text: np.ndarray | None = None,
            progress: bool = True) -> tuple[ScoreBlock, dict]:
    """Train `cfg` on the cases' training users; (scores, about) with its training record."""
    started = time.perf_counter()
    sequences, validator = validation(cfg, cases.train_sequences)
    model, state = train(cfg, sequences, len(cases.item_ids), text, progress=progress,
                         validator=validator)
    table = item_table(model)
    users = user_vectors(model, cases.seen, cfg.max_len, table=table)
    about = {"model": cfg.kind, "settings": cfg.__dict__.copy(),
             "train_s": round(time.perf_counter() - started, 1), **state.record(),
             "training_users": len(cases.train_sequences)}
    return dot_scores(users, table), about


def sasrec(cases: Cases, epochs: int = SASREC.epochs,
           progress: bool = True) -> tuple[ScoreBlock, dict]:

    return trained(cases, replace(SASREC, epochs=epochs), None, progress)


def text_mean(cases: Cases, text: np.ndarray, max_len: int) -> ScoreBlock:
    """Each item scored by its cosine with the mean of the user's newest `max_len` items' unit
    text embeddings (`text`: the item tower's, of cases.item_texts) — what a tower with a fixed
    text skip starts from, and the bar its cold-start slice is held to."""
    unit = unit_rows(text)
    users = np.zeros((len(cases.seen), unit.shape[1]), np.float32)
    for r, seen in enumerate(cases.seen):
        if len(seen):
            users[r] = unit[np.asarray(seen[-max_len:], np.int64)].mean(0)
    return dot_scores(users, unit.astype(np.float32))


def saved(cases: Cases, tower: SavedTower, text: np.ndarray | None) -> tuple[ScoreBlock, dict]:
    """A saved tower over the cases' catalog: its item table for these items (`text`: the
    tower's item model's embeddings of cases.item_texts), user vectors through the ONNX graph."""
    table = tower.item_table(cases.item_ids, text)
    users = onnx_user_vectors(tower.session(threads=2), table, cases.seen, tower.config.max_len)
    return dot_scores(users, table), {"model": tower.config.kind, "folder": str(tower.folder),
                                      "item_model": tower.item_model}
