"""`towerlite catalog update` for the history path: the history tower's item table follows the
catalog, version for version.

A repository deployed with `--history-model` serves `recommend_history` = history_encoder →
history_scorer, each holding the history tower's item table for the whole catalog (the encoder
to look items up, the scorer to rank them). When the scorer's catalog gets version N, both get
version N too: kept items keep their rows (text and ID parts as trained), a new or changed item
gets the row its text embedding gives through the tower's adapter, plus its ID vector where the
tower has one (a changed warm item keeps it; a new item has none: no training likes), removed
items leave; the scorer's IVF index, if version N has one, is rebuilt over the new table.
Version N is part of release N: a server switches both models with the rest of the release
(serving/release/switch.py), so the encoder and the scorer of one request always hold one
table.
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
from . import index as ix
from .catalog_update.merge import merge, row_domains

MODELS = ("history_scorer", "history_encoder")  # the scorer first: its catalog.json's domain
# ranges are what the encoder's history.json records

log = logging.getLogger(__name__)


def deployed(repo: Path) -> bool:
    return all((repo / m).is_dir() for m in MODELS)


def write_versions(repo: Path, base: int, version: int, new: pd.DataFrame, new_text: np.ndarray,
                   removed: set[str], domain_order: Sequence[str]) -> dict:
    """history_scorer/<version>/ and history_encoder/<version>/ for the updated catalog, each
    built under a name Triton ignores and renamed into place, merged exactly as the scorer's
    catalog is (so both hold one row order), from their version `base`. Returns what was
    written."""
    from towerlite.sequential import SavedTower

    from .deploy import check_users

    encoder_base = repo / "history_encoder" / str(base)
    tower = SavedTower.load(encoder_base / "history")
    new_rows = tower.item_table(new["item_id"].tolist(), new_text) if len(new) else \
        np.zeros((0, tower.width), np.float32)
    old_emb, old_ids, old_meta = cat.read_catalog(repo / "history_scorer" / str(base) / "catalog")
    frame, matrix_t = merge(old_ids, row_domains(old_meta, len(old_ids)), old_emb.T, new,
                            new_rows, removed, domain_order)
    table = np.ascontiguousarray(matrix_t.T)
    kind = ix.kind_of(old_meta)
    written = {}
    for model in MODELS:
        previous = repo / model / str(base)
        staging = repo / model / f".staging-{version}"
        final = repo / model / str(version)
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            shutil.copy2(previous / "model.py", staging / "model.py")
            if model == "history_scorer":
                info = {k: v for k, v in old_meta.items()
                        if k not in ("count", "dim", "domains", "index")}
                meta = cat.write_catalog(staging / "catalog", frame, table, info)
                if kind != "exact":  # rebuilt over the new table, as the text scorer's is
                    meta = ix.write_catalog_index(staging / "catalog", table, meta,
                                                  old_meta["index"]["nprobe"], kind,
                                                  check_users(tower, table, frame["item_id"]))
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
            "index": kind, "paths": written}
