"""The served catalog: items from the dataset loaders, rendered by `towerlite.data.render`,
embedded by the item tower in batches, cached per model, written for the scorer.

    items = catalog_items(["movielens", "bookcrossing"])     # item_id, domain, text; sorted
    emb = embed_catalog(items, encoder)                       # (n, dim) float32, cached
    write_catalog(folder, items, emb, info)                   # what the scorer memory-maps

Order: by domain (in the order the datasets were named), then by id as UTF-8 bytes. A domain
is one contiguous range, so a domain filter is a slice of the matrix, and ids are sorted within
it, so the scorer finds EXCLUDE ids by binary search without building a dictionary.

Cache: $TOWERLITE_HOME/catalog-embeddings/<model sha>/<texts sha>/ holds chunk files written
atomically as they finish (an interrupted run resumes) and embeddings.npy once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.data.catalog import prepare_items
from towerlite.errors import TowerliteError

CATALOGS = {"movielens": ("movielens",), "bookcrossing": ("bookcrossing",),
            "both": ("movielens", "bookcrossing")}
CHUNK = 4096


def catalog_names(choice: str) -> tuple[str, ...]:
    try:
        return CATALOGS[choice]
    except KeyError:
        raise TowerliteError(f"unknown catalog {choice!r}; choose from {', '.join(CATALOGS)}") \
            from None


def catalog_items(names: Sequence[str], limit: int | None = None) -> pd.DataFrame:
    """The items of the named datasets (`limit`: the first N of each, for trials and tests)."""
    from towerlite.data import load_dataset

    frames = []
    for name in names:
        items = load_dataset(name).items
        frames.append(items.head(limit) if limit else items)
    items = pd.concat(frames, ignore_index=True)
    return prepare_items(items, list(dict.fromkeys(items["domain"])))


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def texts_key(texts: Sequence[str], max_length: int) -> str:
    h = hashlib.sha256(f"max_length={max_length}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


def embed_catalog(texts: Sequence[str], encoder, cache_dir: Path | None = None,
                  batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """(n, dim) float32 embeddings of `texts` by `encoder` (a towerlite.runtime.OnnxEncoder),
    chunk by chunk with a progress bar; chunks and the result are cached in `cache_dir`."""
    from tqdm import tqdm

    n = len(texts)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        final = cache_dir / "embeddings.npy"
        if final.is_file():
            emb = np.load(final)
            if emb.shape == (n, encoder.dim):
                return emb
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    bar = tqdm(total=n, unit="item", desc="embedding catalog", disable=not progress,
               dynamic_ncols=True)
    for c, start in enumerate(range(0, n, CHUNK)):
        stop = min(start + CHUNK, n)
        chunk_file = cache_dir / f"chunk-{c:05d}.npy" if cache_dir is not None else None
        if chunk_file is not None and chunk_file.is_file():
            part = np.load(chunk_file)
        else:
            part = encoder.encode(list(texts[start:stop]), batch_size=batch_size)
            if chunk_file is not None:
                _save_atomic(chunk_file, part)
        out[start:stop] = part
        bar.update(stop - start)
    bar.close()
    if cache_dir is not None:
        _save_atomic(cache_dir / "embeddings.npy", out)
        for chunk_file in cache_dir.glob("chunk-*.npy"):
            chunk_file.unlink(missing_ok=True)
    return out


def cache_dir_for(model_sha: str, texts: Sequence[str], max_length: int) -> Path:
    from towerlite.home import writable_home

    key = texts_key(texts, max_length)[:16]
    return writable_home() / "catalog-embeddings" / model_sha[:16] / key


def write_catalog(folder: Path, items: pd.DataFrame, embeddings: np.ndarray, info: dict) -> dict:
    """The scorer's files: embeddings_t.npy (dim, n), item_ids.npy (bytes), catalog.json."""
    if len(items) != embeddings.shape[0]:
        raise ValueError("items and embeddings differ in length")
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(folder / "embeddings_t.npy", np.ascontiguousarray(embeddings.T, dtype=np.float32))
    ids = np.array([s.encode("utf-8") for s in items["item_id"]])
    _save_atomic(folder / "item_ids.npy", ids)
    domains = []
    values = items["domain"].to_numpy()
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            domains.append({"name": str(values[start]), "start": start, "stop": i})
            start = i
    names = [d["name"] for d in domains]
    if len(names) != len(set(names)):
        raise ValueError("each domain must be one contiguous range (use prepare_items)")
    meta = {"count": int(len(items)), "dim": int(embeddings.shape[1]), "domains": domains, **info}
    tmp = folder / ".catalog.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / "catalog.json")
    return meta


def read_catalog(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embeddings (n, dim) view, item ids as str, catalog.json) of a written catalog."""
    meta = json.loads((folder / "catalog.json").read_text())
    matrix_t = np.load(folder / "embeddings_t.npy", mmap_mode="r")
    ids = np.load(folder / "item_ids.npy")
    return matrix_t.T, np.array([i.decode("utf-8") for i in ids]), meta
