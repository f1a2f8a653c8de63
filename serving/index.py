"""Approximate search for large catalogs: a FAISS IVF-Flat index (inner product) next to the
exact matrix, chosen per catalog size. Exact search stays the reference: `recall_at_k` compares
the index against it, and deploy records the measurement in catalog.json and deploy_report.json.

IVF-Flat stores the full float32 vectors in its lists, so the scores it returns are the exact
dot products of the items it visits: recall is the only thing it trades. nlist ≈ 4·√n lists,
`nprobe` of them visited per query.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError

INDEX_KINDS = ("exact", "ivf", "auto")
AUTO_MIN_ITEMS = 100_000  # below this exact search is fast enough (≈3 ms at 100k × 384 here)
DEFAULT_NPROBE = 32

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise TowerliteError("the ivf index needs faiss-cpu (pip install faiss-cpu==1.12.0)") \
            from None
    return faiss


def choose(kind: str, count: int) -> str:
    if kind not in INDEX_KINDS:
        raise TowerliteError(f"unknown index {kind!r}; choose from {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        return "ivf" if count >= AUTO_MIN_ITEMS else "exact"
    return kind


def nlist_for(count: int) -> int:
    return int(max(1, min(count // 39, 2 ** round(np.log2(4 * np.sqrt(count))))))


def build_ivf(embeddings: np.ndarray, nlist: int | None = None, seed: int = 0):
    """An IVF-Flat inner-product index over the rows (ids = row positions)."""
    faiss = _faiss()
    n, dim = embeddings.shape
    nlist = nlist or nlist_for(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    sample = embeddings[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ embeddings.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, 1)


def recall_at_k(index, embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                nprobe: int = DEFAULT_NPROBE) -> dict:
    """recall@k of the index against exact search, and per-query latency of both (batch 1)."""
    index.nprobe = nprobe
    truth = exact_top_k(embeddings, queries, k)
    matrix_t = np.ascontiguousarray(embeddings.T)
    t0 = time.perf_counter()
    for q in queries:
        s = q @ matrix_t
        np.argpartition(-s, k - 1)[:k]
    exact_ms = (time.perf_counter() - t0) / len(queries) * 1e3
    found = []
    t0 = time.perf_counter()
    for q in queries:
        found.append(index.search(q[None, :], k)[1][0])
    ivf_ms = (time.perf_counter() - t0) / len(queries) * 1e3
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth))
    return {"k": k, "nprobe": nprobe, "queries": int(len(queries)),
            "recall": round(hits / (k * len(queries)), 4),
            "exact_ms_per_query": round(exact_ms, 3), "ivf_ms_per_query": round(ivf_ms, 3)}


def write_index(index, path: Path) -> None:
    faiss = _faiss()
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def write_catalog_index(folder: Path, embeddings: np.ndarray, meta: dict, nprobe: int) -> dict:
    """catalog/index.faiss beside a written catalog, and its recall against exact search,
    recorded in catalog.json (deploy's version 1 and every `catalog update` version). Returns
    the catalog's meta with the index."""
    t0 = time.perf_counter()
    index = build_ivf(embeddings)
    build_s = time.perf_counter() - t0
    write_index(index, folder / "index.faiss")
    rng = np.random.default_rng(0)
    queries = embeddings[rng.choice(len(embeddings), size=min(200, len(embeddings)),
                                    replace=False)]
    measured = recall_at_k(index, embeddings, queries, k=10, nprobe=nprobe)
    meta = {**meta, "index": {"kind": "ivf_flat", "file": "index.faiss", "nlist": index.nlist,
                              "nprobe": nprobe, "build_seconds": round(build_s, 2),
                              "recall_vs_exact": {**measured, "queries_from": "catalog items"}}}
    tmp = folder / ".catalog.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / "catalog.json")
    log.info(f"ivf index: nlist {index.nlist}, nprobe {nprobe}, recall@10 {measured['recall']} "
             f"vs exact; {measured['ivf_ms_per_query']} ms vs {measured['exact_ms_per_query']} "
             "ms a query")
    return meta
