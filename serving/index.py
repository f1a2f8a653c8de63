"""Approximate search for large catalogs: a FAISS IVF index (inner product) next to the exact
matrix, chosen per catalog size. Exact search stays the reference: `recall_at_k` compares the
index against it, and deploy records the measurement in catalog.json and deploy_report.json.

Kinds (`--index`), nlist ≈ 4·√n lists, `nprobe` of them visited per query:
    ivf      IVF-Flat: full float32 vectors in the lists, so its scores are the exact dot
             products of the items it visits: recall is the only thing it trades
    ivf_sq8  IVF with 8-bit scalar-quantized vectors (¼ the size): its top k·RESCORE
             candidates are re-scored exactly from the catalog matrix
    ivf_pq   IVF with product-quantized vectors (dim/8 bytes an item, 1/32 the size),
             re-scored the same way
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError

SEARCH_KINDS = ("exact", "ivf", "ivf_sq8", "ivf_pq")
INDEX_KINDS = (*SEARCH_KINDS, "auto")
META_KIND = {"ivf": "ivf_flat", "ivf_sq8": "ivf_sq8", "ivf_pq": "ivf_pq"}  # catalog.json's name
# candidates fetched per result wanted, re-scored exactly (compressed kinds only)
RESCORE = {"ivf_sq8": 4, "ivf_pq": 10}
# auto: exact below AUTO_MIN_ITEMS (≈3 ms at 100k × 384 here), then IVF-SQ8: on the real 275k
# catalog and real user queries it has IVF-Flat's recall (0.928 at nprobe 32, re-scored) at
# the same 1.2 ms a query in a quarter of the memory (`towerlite bench index`, docs/serving.md
# Scale); IVF-PQ from AUTO_PQ_MIN_ITEMS, where SQ8's codes (dim bytes an item) stop fitting
AUTO_MIN_ITEMS = 100_000
AUTO_PQ_MIN_ITEMS = 5_000_000
DEFAULT_NPROBE = 32
# From here the coarse quantizer is an HNSW graph over the centroids, trained on fewer points a
# list with fewer k-means rounds: with a flat one, assigning 10M items to 16k lists is ≈ 126
# TFLOP, and k-means on 64 points a list another 300 — hours on 2 cores. HNSW assigns an item
# in a few hundred distance computations instead of 16k.
COARSE_HNSW_MIN_ITEMS = 2_000_000
TRAIN_POINTS_PER_LIST = {False: 64, True: 16}  # by whether the quantizer is HNSW
TRAIN_ROUNDS = {False: 25, True: 10}  # k-means iterations (25 is faiss' default)
# How wide the graph search goes: adding an item (its one list) at faiss' default 16 — 128
# cost 81 s per 262k items on 2 cores and moved recall@10 by 0.01 (60k random 64-d items,
# nprobe 8) — and for a query's nprobe lists at 128, stored in the index: 16 missed lists when
# many are visited (recall 0.87 against 0.99 with every list visited)
HNSW_EF_ADD = 16
HNSW_EF_SEARCH = 128
# From CODES_CAP_MIN_ITEMS a query scans at most CODES_CAP_FACTOR times the codes its nprobe
# lists hold on average (faiss' max_codes; nearest lists first): the lists are unbalanced (the
# items crowd where real ones do, and so do the queries), and at 10M items the crowded lists
# were the p99 (41k codes scanned at the median query, 137k at the 99th percentile: 4.4 of its
# ~6 ms). 3.1 is 60.5k codes at 10M items and nprobe 32; measured at 60k: recall@10 0.902 (0.913
# uncapped), p99 3.4–3.6 ms (4.8–5.2 uncapped); at 45k recall fell to 0.895 (docs/serving.md
# Scale). Recorded in catalog.json; the scorer applies it.
CODES_CAP_MIN_ITEMS = COARSE_HNSW_MIN_ITEMS
CODES_CAP_FACTOR = 3.1

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
        if count < AUTO_MIN_ITEMS:
            return "exact"
        return "ivf_pq" if count >= AUTO_PQ_MIN_ITEMS else "ivf_sq8"
    return kind


def nlist_for(count: int) -> int:
    return int(max(1, min(count // 39, 2 ** round(np.log2(4 * np.sqrt(count))))))


def _pq_m(dim: int) -> int:
    """Sub-quantizers for PQ: about one per 8 dimensions, dividing `dim`."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def factory_string(kind: str, dim: int, nlist: int, hnsw: bool = False) -> str:
    coarse = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    return {"ivf": f"{coarse},Flat", "ivf_sq8": f"{coarse},SQ8",
            "ivf_pq": f"{coarse},PQ{_pq_m(dim)}x8"}[kind]


def build_index(kind: str, embeddings: np.ndarray, nlist: int | None = None, seed: int = 0,
                progress: bool = False, centroids: np.ndarray | None = None):
    """An inner-product IVF index of `kind` over the rows (ids = row positions), added in
    chunks (a memory-mapped matrix larger than RAM works; any float dtype). `centroids`: the
    lists of an index already built over the same rows (`coarse_centroids`), so a second kind
    skips the k-means."""
    from tqdm.auto import tqdm

    faiss = _faiss()
    n, dim = embeddings.shape
    if kind == "ivf_pq" and n < 10_000:
        raise TowerliteError(f"ivf_pq needs at least 10,000 items to train its 256-entry "
                             f"codebooks ({n:,} here): use ivf, ivf_sq8 or exact")
    nlist = nlist or nlist_for(n)
    hnsw = n >= COARSE_HNSW_MIN_ITEMS
    index = faiss.index_factory(dim, factory_string(kind, dim, nlist, hnsw),
                                faiss.METRIC_INNER_PRODUCT)
    ivf = faiss_ivf(index)
    ivf.cp.niter = TRAIN_ROUNDS[hnsw]
    if centroids is not None:  # faiss trains only the codes when its quantizer holds nlist
        ivf.quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    rng = np.random.default_rng(seed)
    points = TRAIN_POINTS_PER_LIST[hnsw] * nlist
    sample = np.sort(rng.choice(n, size=min(n, max(points, 10_000)), replace=False))
    index.train(np.ascontiguousarray(embeddings[sample], dtype=np.float32))
    graph = _faiss().downcast_index(ivf.quantizer).hnsw if hnsw else None
    if graph is not None:
        graph.efSearch = HNSW_EF_ADD
    for start in tqdm(range(0, n, 262_144), disable=not progress, desc=f"{kind}: adding",
                      unit="chunk"):
        index.add(np.ascontiguousarray(embeddings[start:start + 262_144], dtype=np.float32))
    if graph is not None:
        graph.efSearch = HNSW_EF_SEARCH
    return index


def max_codes(count: int, nlist: int, nprobe: int, factor: float) -> int:
    """faiss' max_codes for a cap of `factor` times the codes of nprobe average lists; 0 (no
    cap) when factor is 0 or every list is visited (an exhaustive search stays exhaustive)."""
    if not factor or nprobe >= nlist:
        return 0
    return int(np.ceil(factor * nprobe * count / nlist))


def coarse_centroids(index) -> np.ndarray:
    """The (nlist, dim) centroids of an IVF index's lists."""
    ivf = faiss_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def faiss_ivf(index):
    return _faiss().extract_index_ivf(index)


def read_index(path: Path, mmap: bool = False):
    """The index from its file; `mmap`: its lists stay in the file, shared through the page
    cache by every process that maps it (each scorer instance), instead of one copy each.
    IO_FLAG_MMAP_IFC maps the lists in place and searches as fast as a copy in memory
    (2.2 against 2.3 ms a query, IVF-Flat 200k × 384, nprobe 32); the older IO_FLAG_MMAP
    took 7.7 ms (measured 2026-12-01). In a served scorer IVF-SQ8 maps in place; the deploy's
    IVF-Flat index still took 414 MB of anonymous memory there (docs/serving.md, Scale)."""
    faiss = _faiss()
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)


def exact_top_k_t(matrix_t: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """Top-k rows of one query against the (dim, n) matrix, as the scorer searches exactly."""
    scores = query @ matrix_t
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part])]


ROWS_FILE = "rows.npy"  # the catalog's (n, dim) float32 rows, beside a compressed index


class RowFile:
    """An (n, dim) .npy file whose rows are read with os.pread (`rows_file[ids]`), as the
    served scorer re-scores a compressed index's candidates (its model.py holds its own copy of
    these lines: it stands alone). Read, not memory-mapped: the pages stay in the page cache,
    one copy for the machine, out of every process' RSS — a mapped file's random row reads
    pulled ~2 MB folios into each mapping process (40 random rows: +82 MB RssFile; 400 × 40 read
    with pread: +0, docs/serving.md Scale)."""

    def __init__(self, path: Path):
        header = np.load(path, mmap_mode="r")  # numpy reads the header; no row is touched
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        data = b"".join(os.pread(self.fd, self.row_bytes, self.offset + int(r) * self.row_bytes)
                        for r in rows)
        return np.frombuffer(data, self.dtype).reshape(-1, self.shape[1])

    def close(self) -> None:
        os.close(self.fd)


class Searcher:
    """One query's top-k as the scorer finds it with an index: `k·rescore` candidates from the
    index, re-scored exactly when `rescore` (compressed kinds) from the (dim, n) matrix, or from
    `rows`, an (n, dim) matrix of any float dtype or a RowFile (as the served scorer does: a
    candidate is one contiguous read instead of `dim` strided ones)."""

    def __init__(self, index, matrix_t: np.ndarray | None, nprobe: int, rescore: int = 0,
                 rows: np.ndarray | None = None, max_codes: int = 0):
        self.index, self.matrix_t, self.rows, self.rescore = index, matrix_t, rows, rescore
        # max_codes > 0: stop scanning lists, nearest first, past this many codes (a query
        # whose nearest lists are crowded scans less)
        self.options = {"nprobe": nprobe, "max_codes": max_codes}
        self.params = _faiss().SearchParametersIVF(**self.options)  # built once: timed per query

    def top_k(self, query: np.ndarray, k: int, within: tuple[int, int] | None = None
              ) -> np.ndarray:
        """`within`: rows [start, stop) only, as the scorer searches one domain."""
        params = self.params if within is None else _faiss().SearchParametersIVF(
            **self.options, sel=_faiss().IDSelectorRange(*within))
        fetch = k * self.rescore if self.rescore else k
        _, rows = self.index.search(np.ascontiguousarray(query[None, :], dtype=np.float32),
                                    fetch, params=params)
        rows = rows[0][rows[0] >= 0]
        if not self.rescore:
            return rows[:k]
        if self.rows is not None:
            rows = np.sort(rows)  # ascending reads through the file
            exact = self.rows[rows].astype(np.float32) @ query
        else:
            exact = query @ self.matrix_t[:, rows]
        return rows[np.argsort(-exact, kind="stable")[:k]]


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, 1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(part, order, 1)


def exact_top_k(embeddings: np.ndarray, queries: np.ndarray, k: int,
                chunk: int = 262_144) -> np.ndarray:
    """Top-k rows of each query, best first, by exact dot products: the rows read `chunk` at a
    time (any float dtype, memory-mapped works: 10M × 384 fp16 is never read whole), 64
    queries at a time."""
    queries = np.asarray(queries, dtype=np.float32)
    if len(embeddings) <= chunk:
        matrix = np.asarray(embeddings, dtype=np.float32)
        return np.concatenate([_best(queries[a:a + 64] @ matrix.T, k)
                               for a in range(0, len(queries), 64)])
    best_rows = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    for start in range(0, len(embeddings), chunk):
        part = np.asarray(embeddings[start:start + chunk], dtype=np.float32)
        scores = np.concatenate([best_scores, queries @ part.T], axis=1)
        rows = np.concatenate([best_rows, np.broadcast_to(
            np.arange(start, start + len(part)), (len(queries), len(part)))], axis=1)
        keep = _best(scores, k)
        best_rows = np.take_along_axis(rows, keep, 1)
        best_scores = np.take_along_axis(scores, keep, 1)
    return best_rows


@dataclass
class ExactReference:
    """Exact search's answer to a query set, computed once for every nprobe it is compared
    with: the top-k rows, the (dim, n) matrix the scorer scans, its ms a query (batch 1)."""

    truth: np.ndarray
    matrix_t: np.ndarray
    exact_ms: float

    @classmethod
    def of(cls, embeddings: np.ndarray, queries: np.ndarray, k: int = 10) -> ExactReference:
        truth = exact_top_k(embeddings, queries, k)
        matrix_t = np.ascontiguousarray(embeddings.T)
        t0 = time.perf_counter()
        for q in queries:
            exact_top_k_t(matrix_t, q, k)
        return cls(truth, matrix_t, (time.perf_counter() - t0) / len(queries) * 1e3)


def recall_at_k(index, embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                nprobe: int = DEFAULT_NPROBE, rescore: int = 0, codes_cap: int = 0,
                reference: ExactReference | None = None) -> dict:
    """recall@k of the index (re-scored as the scorer does when `rescore`, scanning at most
    `codes_cap` codes when > 0) against exact search (`reference`, computed here when None),
    and per-query latency of both (batch 1)."""
    reference = reference or ExactReference.of(embeddings, queries, k)
    truth, matrix_t, exact_ms = reference.truth, reference.matrix_t, reference.exact_ms
    searcher = Searcher(index, matrix_t, nprobe, rescore, max_codes=codes_cap)
    t0 = time.perf_counter()
    found = [searcher.top_k(q, k) for q in queries]
    ivf_ms = (time.perf_counter() - t0) / len(queries) * 1e3
    # an item tied with the k-th exact score is as right as the one exact search kept: faiss'
    # AVX-512 kernels and numpy's BLAS round the same dot product differently (1 of 2,000
    # swapped at a tie on the avx512 machine, 2026-12-01)
    hits = 0
    for q, f, t in zip(queries, found, truth):
        kth = float(q @ matrix_t[:, t[-1]])
        scores = q @ matrix_t[:, f]
        exact = set(t.tolist())
        hits += sum(1 for item, score in zip(f.tolist(), scores)
                    if item in exact or score >= kth - 1e-5 * max(1.0, abs(kth)))
    return {"k": k, "nprobe": nprobe, "rescore": rescore, "max_codes": codes_cap,
            "queries": int(len(queries)),
            "recall": round(hits / (k * len(queries)), 4),
            "exact_ms_per_query": round(exact_ms, 3), "ivf_ms_per_query": round(ivf_ms, 3)}


def write_index(index, path: Path) -> None:
    faiss = _faiss()
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def write_catalog_index(folder: Path, embeddings: np.ndarray, meta: dict,
                        nprobe: int | tuple[int, ...], kind: str = "ivf",
                        queries: tuple[str, np.ndarray] | None = None,
                        recall_target: float | None = None) -> dict:
    """catalog/index.faiss beside a written catalog, and its recall against exact search,
    recorded in catalog.json (deploy's version 1 and every `catalog update` version). Returns
    the catalog's meta with the index. `queries`: (what they are, vectors) to measure recall
    with; else 200 of the catalog's own rows (a text tower's users are texts like them).
    `nprobe` several values (with `recall_target`): the smallest whose recall@10 on the
    queries reaches the target is served (the largest where none does); each one measured is
    recorded (nprobe_sweep)."""
    ladder = (nprobe,) if isinstance(nprobe, int) else tuple(sorted(nprobe))
    if len(ladder) > 1 and recall_target is None:
        raise ValueError("several nprobe values to choose from need a recall_target")
    t0 = time.perf_counter()
    index = build_index(kind, embeddings)
    build_s = time.perf_counter() - t0
    write_index(index, folder / "index.faiss")
    rescore = RESCORE.get(kind, 0)
    if rescore:  # what the scorer re-scores candidates from (RowFile)
        tmp = folder / f".{ROWS_FILE}.tmp"
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(embeddings, dtype=np.float32))
        tmp.replace(folder / ROWS_FILE)
    if queries is None:
        rng = np.random.default_rng(0)
        queries = ("catalog items", embeddings[rng.choice(len(embeddings),
                                                          size=min(200, len(embeddings)),
                                                          replace=False)])
    queries_from, queries = queries
    nlist = faiss_ivf(index).nlist
    factor = CODES_CAP_FACTOR if len(embeddings) >= CODES_CAP_MIN_ITEMS else 0.0
    sweep, reference = [], ExactReference.of(embeddings, queries, 10)
    for nprobe in ladder:
        measured = recall_at_k(index, embeddings, queries, k=10, nprobe=nprobe, rescore=rescore,
                               codes_cap=max_codes(len(embeddings), nlist, nprobe, factor),
                               reference=reference)
        sweep.append({k: measured[k] for k in ("nprobe", "recall", "ivf_ms_per_query")})
        if recall_target is None or measured["recall"] >= recall_target:
            break
    chosen = {} if recall_target is None else {"recall_target": recall_target,
                                               "nprobe_sweep": sweep}
    hnsw = len(embeddings) >= COARSE_HNSW_MIN_ITEMS
    meta = {**meta, "index": {"kind": META_KIND[kind], "file": "index.faiss", "nlist": nlist,
                              "nprobe": nprobe, "rescore": rescore, "codes_cap_factor": factor,
                              # a one-domain request over fewer items is scanned exactly, as
                              # auto would a catalog of that size (the scorer reads it)
                              "exact_below": AUTO_MIN_ITEMS,
                              "factory": factory_string(kind, embeddings.shape[1], nlist, hnsw),
                              "build_seconds": round(build_s, 2),
                              "recall_vs_exact": {**measured, "queries_from": queries_from},
                              **chosen}}
    tmp = folder / ".catalog.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / "catalog.json")
    log.info(f"{kind} index: nlist {nlist}, nprobe {nprobe}, recall@10 {measured['recall']} "
             f"vs exact; {measured['ivf_ms_per_query']} ms vs {measured['exact_ms_per_query']} "
             "ms a query" + (f" (the fewest of {ladder} reaching recall {recall_target}: "
                             + ", ".join(f"{s['nprobe']}: {s['recall']}" for s in sweep) + ")"
                             if chosen else ""))
    return meta


def kind_of(meta: dict) -> str:
    """The `--index` kind of a written catalog (catalog.json), "exact" without an index."""
    written = (meta.get("index") or {}).get("kind")
    if not written:
        return "exact"
    return {v: k for k, v in META_KIND.items()}.get(written, "ivf")
