"""`towerlite catalog update` for the history path: the history tower's item table follows the
catalog, version for version.

A repository deployed with `--history-model` serves `recommend_history` = history_encoder →
history_scorer, each holding the history tower's item table for the whole catalog (the encoder
to look items up, the scorer to rank them). When the scorer's catalog gets version N, both get
version N too: kept items keep their rows (text and ID parts as trained), a new or changed item
gets the row its text embedding gives through the tower's adapter (no ID vector: it had no
training likes), removed items leave. On the server the scorer side loads first: for the moment
between the two loads, a new item is ranked but not yet readable in a history (it is skipped
and reported), and a removed one read in a history is ignored by the scorer's exclusions
(UNKNOWN_EXCLUDE skip) instead of failing the request.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.errors import TowerliteError

from . import catalog as cat
from .catalog_update.merge import merge, row_domains

MODELS = ("history_scorer", "history_encoder")  # in load order

log = logging.getLogger(__name__)


def deployed(repo: Path) -> bool:
    return all((repo / m).is_dir() for m in MODELS)


def _versions(repo: Path, model: str) -> list[int]:
    return sorted(int(p.name) for p in (repo / model).iterdir() if p.is_dir() and p.name.isdigit())


def write_versions(repo: Path, version: int, new: pd.DataFrame, new_text: np.ndarray,
                   removed: set[str], domain_order: Sequence[str]) -> dict:
    """history_scorer/<version>/ and history_encoder/<version>/ for the updated catalog, each
    built under a name Triton ignores and renamed into place, merged exactly as the scorer's
    catalog is (so both hold one row order). Returns what was written."""
    from towerlite.sequential import SavedTower

    base = _versions(repo, "history_scorer")[-1]
    encoder_base = repo / "history_encoder" / str(_versions(repo, "history_encoder")[-1])
    tower = SavedTower.load(encoder_base / "history")
    new_rows = tower.item_table(new["item_id"].tolist(), new_text) if len(new) else \
        np.zeros((0, tower.config.dim), np.float32)
    old_emb, old_ids, old_meta = cat.read_catalog(repo / "history_scorer" / str(base) / "catalog")
    frame, matrix_t = merge(old_ids, row_domains(old_meta, len(old_ids)), old_emb.T, new,
                            new_rows, removed, domain_order)
    table = np.ascontiguousarray(matrix_t.T)
    written = {}
    for model in MODELS:
        previous = repo / model / str(_versions(repo, model)[-1])
        staging = repo / model / f".staging-{version}"
        final = repo / model / str(version)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            shutil.copy2(previous / "model.py", staging / "model.py")
            if model == "history_scorer":
                info = {k: v for k, v in old_meta.items() if k not in ("count", "dim", "domains")}
                meta = cat.write_catalog(staging / "catalog", frame, table, info)
            else:
                folder = staging / "history"
                shutil.copytree(previous / "history", folder)
                np.save(folder / "item_table.npy", table)
                np.save(folder / "item_ids.npy", np.array([i.encode() for i in frame["item_id"]]))
                about = json.loads((folder / "history.json").read_text())
                (folder / "history.json").write_text(json.dumps(
                    {**about, "count": meta["count"], "domains": meta["domains"]}, indent=1))
            if final.exists():
                raise TowerliteError(f"{final} exists already (another update?); run it again")
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        written[model] = str(final)
    log.info(f"wrote history_scorer and history_encoder version {version}: {len(frame):,} items "
             f"({len(new)} rows from text through the tower's adapter)")
    return {"version": version, "count": int(len(frame)), "text_rows": int(len(new)),
            "paths": written}


def load(client, protocol: str, load_model, version: int) -> bool:
    """Load both models (scorer side first) and say whether `recommend_history` is ready at
    `version`."""
    for model in MODELS:
        load_model(client, protocol, model)
    return all(client.is_model_ready(m, str(version)) for m in MODELS) and \
        client.is_model_ready("recommend_history")


def prune(repo: Path, keep: int) -> list[int]:
    gone = []
    for model in MODELS:
        versions = _versions(repo, model)
        for v in versions[:-keep] if keep >= 1 else []:
            shutil.rmtree(repo / model / str(v))
            gone.append(v)
    return sorted(set(gone))
