"""Writing a version: REPO/scorer/<R>/ built beside the others under a name Triton ignores,
read back, then renamed into place."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.errors import TowerliteError

from .. import catalog as cat
from .. import index as ix


def write_version(repo: Path, base: int, frame: pd.DataFrame, matrix_t: np.ndarray, info: dict,
                  index_kind: str, nprobe: int, version: int | None = None) -> tuple[Path, dict]:
    """REPO/scorer/<version>/ (default base+1; the code of version `base`) built beside the
    others under a name Triton ignores, read back, then renamed into place: a reader (or a
    crash) sees the whole version or none of it."""
    scorer = repo / "scorer"
    version = version or base + 1
    staging = scorer / f".staging-{version}"
    final = scorer / str(version)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy_version_code(scorer / str(base), staging)
        folder = staging / "catalog"
        embeddings = matrix_t.T  # a view; write_catalog stores it transposed again, no copy
        meta = cat.write_catalog(folder, frame, embeddings, info)
        if index_kind != "exact":
            meta = ix.write_catalog_index(folder, embeddings, meta, nprobe, index_kind)
        _read_back(folder, frame, matrix_t)
        try:
            staging.rename(final)
        except OSError:
            raise TowerliteError(f"{final} appeared while this update ran (another update?); "
                                 "run it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, meta


def _copy_version_code(previous: Path, staging: Path) -> None:
    """Everything of the previous version but its catalog (model.py: the code that runs with
    the unchanged config.pbtxt)."""
    staging.mkdir(parents=True)
    for entry in previous.iterdir():
        if entry.name in ("catalog", "__pycache__"):  # the stub's bytecode is its own
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)
    if not (staging / "model.py").is_file():
        raise TowerliteError(f"{previous} has no model.py to carry into the next version")


def _read_back(folder: Path, frame: pd.DataFrame, matrix_t: np.ndarray) -> None:
    emb, ids, meta = cat.read_catalog(folder)
    if meta["count"] != len(frame) or list(ids) != frame["item_id"].tolist() \
            or not np.array_equal(np.asarray(emb.T), matrix_t):
        raise TowerliteError(f"{folder}: the written catalog does not read back as written "
                             "(disk full?); nothing was renamed into place")
