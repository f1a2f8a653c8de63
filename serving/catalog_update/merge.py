"""Merging: the catalog after an update (old rows kept unless replaced or removed, new rows
added) in the scorer's order. The scorer's catalog and the history tower's item table are merged
alike, so both hold one row order."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from towerlite.data.catalog import scorer_order
from towerlite.errors import TowerliteError


def row_domains(meta: dict, count: int) -> np.ndarray:
    """The domain of each of a catalog's `count` rows, from catalog.json's domain ranges."""
    domains = np.empty(count, dtype=object)
    for d in meta["domains"]:
        domains[d["start"]:d["stop"]] = d["name"]
    return domains


def merge(old_ids: np.ndarray, old_domains: np.ndarray, old_matrix_t: np.ndarray,
          new: pd.DataFrame, new_emb: np.ndarray, removed: set[str],
          domain_order: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(item_id + domain frame, (dim, n) matrix) of the catalog after the update: old rows not
    replaced or removed, plus `new` (prepared items with their embeddings), in scorer order."""
    replaced = set(new["item_id"])
    keep = np.array([i not in replaced and i not in removed for i in old_ids], dtype=bool)
    old_rows = np.flatnonzero(keep)
    frame = pd.concat([
        pd.DataFrame({"item_id": old_ids[keep], "domain": old_domains[keep], "_src": old_rows}),
        pd.DataFrame({"item_id": new["item_id"].to_numpy(), "domain": new["domain"].to_numpy(),
                      "_src": -1 - np.arange(len(new))}),  # negative: a row of new_emb
    ], ignore_index=True)
    frame = scorer_order(frame, domain_order)
    if frame.empty:
        raise TowerliteError("the update would leave the catalog empty")
    src = frame.pop("_src").to_numpy()
    matrix_t = np.empty((old_matrix_t.shape[0], len(frame)), dtype=np.float32)
    from_old = src >= 0
    # gather the kept columns of the memory-mapped (dim, n) matrix a block of rows at a time:
    # a few MB in flight instead of a second copy of a large catalog
    old_cols = src[from_old]
    for r in range(0, matrix_t.shape[0], 32):
        matrix_t[r:r + 32, from_old] = old_matrix_t[r:r + 32][:, old_cols]
    matrix_t[:, ~from_old] = new_emb[-1 - src[~from_old]].T
    return frame, matrix_t
