"""The history tower's graph as int8 and fp16, each gated on ranking agreement with fp32.

A variant is a tower folder of its own (OUT/model-int8_dynamic, OUT/model-fp16): the fp32
folder's files with the graph replaced by onnxruntime's quantizer / fp16 converter output
(towerlite.onnx_variants, the builders `towerlite export` uses), so `towerlite deploy
--history-model OUT/model-int8_dynamic` serves it with nothing else to choose. What decides
whether it is written is the ranking, not the cosine: over the evaluation's held-out users,
the mean share of fp32's top-10 it returns (MIN_TOP10_OVERLAP), beside its Recall@10 and its
latency at batch 1 (the served request) for a short and a full history.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from towerlite.evaluation.cases import Cases
from towerlite.evaluation.metrics import dot_scores, top_k, top_k_overlap
from towerlite.sequential import ONNX_FILE, SavedTower, history_rows, onnx_user_vectors

log = logging.getLogger(__name__)

VARIANTS = ("int8_dynamic", "fp16")
# a variant must return, on average, this share of the fp32 graph's top-10 (same catalog,
# same exclusions): int8 returned 0.983 and fp16 0.999 on Book-Crossing's held-out users
MIN_TOP10_OVERLAP = 0.95
LATENCY_RUNS = 300


def _build(variant: str, src: Path, dst: Path) -> dict:
    from towerlite import onnx_variants as build

    if variant == "int8_dynamic":
        return build.int8_dynamic(src, dst)
    return build.fp16(src, dst)


def write(folder: Path, variant: str) -> Path:
    """FOLDER-VARIANT: FOLDER's files, its graph `variant`; staged and moved into place whole."""
    from towerlite.files import replace_dir

    target = folder.with_name(f"{folder.name}-{variant}")
    staging = folder.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(folder, staging, ignore=shutil.ignore_patterns(ONNX_FILE))
    settings = _build(variant, folder / ONNX_FILE, staging / ONNX_FILE)
    config = json.loads((staging / "config.json").read_text())
    config["graph_variant"] = {"name": variant, "from": str(folder / ONNX_FILE), **settings}
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    return replace_dir(staging, target)


def _latency_ms(session, table: np.ndarray, length: int, max_len: int) -> dict:
    """p50/p99 of one request's graph run (batch 1, `length` items), one thread."""
    rows = history_rows([list(range(min(length, len(table))))], max_len)
    mask = (rows >= 0).astype(np.float32)
    feed = {"item_vectors": (table[np.maximum(rows, 0)] * mask[..., None]).astype(np.float32),
            "mask": mask}
    for _ in range(30):
        session.run(None, feed)
    times = []
    for _ in range(LATENCY_RUNS):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 3)}


def compare(cases: Cases, reference: SavedTower, variant: SavedTower,
            text: np.ndarray | None) -> dict:
    """The variant against the reference over the cases' held-out users: top-10 agreement and
    latency of both graphs (the same item table: the graph is all that differs)."""
    table = reference.item_table(cases.item_ids, text)
    max_len = reference.config.max_len
    out = {}
    for name, tower in (("reference", reference), ("variant", variant)):
        session = tower.session(threads=1)
        users = onnx_user_vectors(session, table, cases.seen, max_len)
        out[name] = {"top10": top_k(dot_scores(users, table), len(users), cases.seen, 10),
                     "latency": {f"history_{n}": _latency_ms(session, table, n, max_len)
                                 for n in sorted({min(10, max_len), max_len})}}
    ref, var = out["reference"]["top10"], out["variant"]["top10"]
    overlap = float(top_k_overlap(ref, var).mean())
    return {"top10_overlap": round(overlap, 4),
            "identical_top10": round(float(np.mean((ref == var).all(1))), 4),
            "gate": {"min_top10_overlap": MIN_TOP10_OVERLAP,
                     "passed": overlap >= MIN_TOP10_OVERLAP},
            "latency_batch1_1thread": out["variant"]["latency"],
            "reference_latency_batch1_1thread": out["reference"]["latency"]}
