"""The FAISS index option without a server: IVF recall against exact search, the fewest lists
that reach the recall target, the large-catalog paths (HNSW over lists, fp16 rows) and the
compressed indexes re-scored exactly answering like exact search. Served: test_serving.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from towerlite.errors import TowerliteError

# faiss's SWIG bindings warn on import under Python 3.11+
pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__:DeprecationWarning")


def test_ivf_index_recall_against_exact():
    from towerlite.serving import index as ix

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(4000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = ix.build_index("ivf", emb)
    assert index.nlist == ix.nlist_for(4000) == 102  # 4·√n, at least 39 points a list
    queries = emb[:50] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32)
    full = ix.recall_at_k(index, emb, queries, k=10, nprobe=index.nlist)
    assert full["recall"] == 1.0  # every list visited: exact
    some = ix.recall_at_k(index, emb, queries, k=10, nprobe=8)
    assert 0.2 < some["recall"] < 1.0 and some["queries"] == 50
    assert ix.choose("auto", 99_999) == "exact" and ix.choose("auto", 100_000) == "ivf_sq8"
    assert ix.choose("auto", ix.AUTO_PQ_MIN_ITEMS) == "ivf_pq" and ix.choose("ivf", 10) == "ivf"
    with pytest.raises(TowerliteError, match="unknown index"):
        ix.choose("hnsw", 10)


def test_index_serves_the_fewest_lists_that_reach_the_recall_target(tmp_path):
    """Given several nprobe values and a recall target (the history scorer's deploy), the index
    serves the smallest whose recall@10 on the queries reaches it, and records each measured."""
    from towerlite.serving import index as ix

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(4000, 32)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    queries = ("near items", emb[:50] + 0.1 * rng.normal(size=(50, 32)).astype(np.float32))
    meta = ix.write_catalog_index(tmp_path, emb, {"count": 4000}, (102, 2, 8, 32), "ivf",
                                  queries, recall_target=0.95)["index"]
    sweep = meta["nprobe_sweep"]
    assert [s["nprobe"] for s in sweep] == [2, 8, 32, 102][:len(sweep)] and len(sweep) >= 2
    assert meta["nprobe"] == sweep[-1]["nprobe"] == meta["recall_vs_exact"]["nprobe"]
    assert all(s["recall"] < 0.95 for s in sweep[:-1]) and sweep[-1]["recall"] >= 0.95
    assert json.loads((tmp_path / "catalog.json").read_text())["index"] == meta
    fixed = ix.write_catalog_index(tmp_path, emb, {"count": 4000}, 8, "ivf", queries)["index"]
    assert fixed["nprobe"] == 8 and "nprobe_sweep" not in fixed
    with pytest.raises(ValueError, match="recall_target"):
        ix.write_catalog_index(tmp_path, emb, {"count": 4000}, (8, 32), "ivf", queries)


@pytest.mark.parametrize("kind", ["ivf_sq8", "ivf_pq"])
def test_large_catalog_path_hnsw_lists_fp16_rows_answer_like_exact(kind, tmp_path, monkeypatch):
    """The path for catalogs past COARSE_HNSW_MIN_ITEMS (10M items in docs/serving.md), at a
    test's size: an HNSW graph over the lists' centroids, the catalog an fp16 (n, dim) file
    memory-mapped for re-scoring and read a chunk at a time for exact truth. Visiting every
    list, the re-scored top-10 is the exact one (exact over the same fp16 rows)."""
    import faiss

    from towerlite.serving import index as ix
    from towerlite.serving.bench.index import synthetic

    monkeypatch.setattr(ix, "COARSE_HNSW_MIN_ITEMS", 10_000)
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(300, 32))
    base = (centers[rng.integers(0, 300, 4_000)] + 0.5 * rng.normal(size=(4_000, 32)))
    base = (base / np.linalg.norm(base, axis=1, keepdims=True)).astype(np.float32)
    rows = synthetic(base, 12_000, 0.35, path=tmp_path / "catalog_f16.npy")
    assert isinstance(rows, np.memmap) and rows.dtype == np.float16 and rows.shape == (12_000, 32)
    np.testing.assert_allclose(rows[:4_000], base, atol=1e-3)  # the real rows come first
    queries = base[:40] + 0.1 * rng.normal(size=(40, 32)).astype(np.float32)
    truth = ix.exact_top_k(rows, queries, 10, chunk=5_000)  # three chunks, merged
    np.testing.assert_array_equal(
        truth, ix.exact_top_k(np.asarray(rows, np.float32), queries, 10))
    index = ix.build_index(kind, rows)
    quantizer = faiss.downcast_index(ix.faiss_ivf(index).quantizer)
    assert isinstance(quantizer, faiss.IndexHNSWFlat)
    assert quantizer.hnsw.efSearch == ix.HNSW_EF_SEARCH
    # another kind over the same rows takes these lists instead of its own k-means
    other = ix.build_index("ivf_sq8" if kind == "ivf_pq" else "ivf_pq", rows,
                           centroids=ix.coarse_centroids(index))
    np.testing.assert_array_equal(ix.coarse_centroids(other), ix.coarse_centroids(index))
    assert other.ntotal == len(rows)
    ix.write_index(index, tmp_path / "index.faiss")
    mapped = ix.read_index(tmp_path / "index.faiss", mmap=True)
    every = ix.Searcher(mapped, None, ix.faiss_ivf(mapped).nlist, ix.RESCORE[kind], rows=rows)
    found = [every.top_k(q, 10) for q in queries]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert recall >= 0.99, recall
    some = ix.Searcher(mapped, None, 2, ix.RESCORE[kind], rows=rows)
    assert np.mean([len(set(some.top_k(q, 10)) & set(t)) / 10 for q, t in zip(queries, truth)]) \
        < recall


@pytest.mark.parametrize("kind", ["ivf_sq8", "ivf_pq"])
def test_compressed_index_rescored_answers_like_exact_and_maps_in_place(kind, tmp_path):
    """SQ8 / PQ codes find candidates; re-scored exactly from the matrix, the top-10 is the
    exact one when every list is visited (the candidates hold it) and the scores are exact. The
    memory-mapped read answers the same and costs a reading process almost no memory."""
    from towerlite.serving import index as ix

    rng = np.random.default_rng(2)
    # clustered, as item embeddings are (PQ codebooks learn the clusters; i.i.d. Gaussian
    # vectors are PQ's worst case and no catalog's shape)
    centers = rng.normal(size=(300, 32))
    emb = (centers[rng.integers(0, 300, 12_000)] + 0.5 * rng.normal(size=(12_000, 32)))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    queries = emb[:40] + 0.1 * rng.normal(size=(40, 32)).astype(np.float32)
    index = ix.build_index(kind, emb)
    nlist = ix.faiss_ivf(index).nlist
    full = ix.recall_at_k(index, emb, queries, k=10, nprobe=nlist, rescore=ix.RESCORE[kind])
    assert full["recall"] >= 0.99, full
    # the codes' own scores rank worse (PQ: 0.58 measured): re-scoring is what makes it exact
    raw = ix.recall_at_k(index, emb, queries, k=10, nprobe=nlist, rescore=0)
    assert raw["recall"] <= full["recall"]
    if kind == "ivf_pq":
        assert raw["recall"] < 0.9, raw
    ix.write_index(index, tmp_path / "index.faiss")
    mapped = ix.read_index(tmp_path / "index.faiss", mmap=True)
    matrix_t = np.ascontiguousarray(emb.T)
    a = ix.Searcher(index, matrix_t, 8, ix.RESCORE[kind])
    b = ix.Searcher(mapped, matrix_t, 8, ix.RESCORE[kind])
    # the scorer's way: candidates' rows read from an (n, dim) file with pread
    np.save(tmp_path / ix.ROWS_FILE, emb)
    rows_file = ix.RowFile(tmp_path / ix.ROWS_FILE)
    assert len(rows_file) == len(emb)
    np.testing.assert_array_equal(rows_file[[11_999, 0, 7]], emb[[11_999, 0, 7]])
    c = ix.Searcher(mapped, None, 8, ix.RESCORE[kind], rows=rows_file)
    for q in queries[:10]:
        np.testing.assert_array_equal(a.top_k(q, 10), b.top_k(q, 10))
        np.testing.assert_array_equal(a.top_k(q, 10), c.top_k(q, 10))
    rows_file.close()
    assert ix.kind_of({"index": {"kind": kind}}) == kind and ix.kind_of({}) == "exact"
    assert ix.kind_of({"index": {"kind": "ivf_flat"}}) == "ivf"
    if kind == "ivf_pq":
        with pytest.raises(TowerliteError, match="ivf_pq needs at least 10,000 items"):
            ix.build_index(kind, emb[:5000])
