"""Catalog embedding without a server: cached per chunk and resumed, in worker processes equal
to one process, CUDA taken only where onnxruntime has it, a worker count below one refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_sentences

from towerlite.errors import TowerliteError
from towerlite.serving import catalog as cat


class CountingEncoder:
    dim = 3

    def __init__(self):
        self.calls = 0

    def encode(self, texts, batch_size=32):
        self.calls += 1
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_catalog_embeddings_are_cached_per_chunk_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(cat, "CHUNK", 4)
    texts = [f"item {i}" * (i % 3 + 1) for i in range(10)]
    enc = CountingEncoder()
    first = cat.embed_catalog(texts, enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == 3 and (tmp_path / "embeddings.npy").is_file()
    assert not list(tmp_path.glob("chunk-*"))
    again = cat.embed_catalog(texts, enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == 3
    np.testing.assert_array_equal(first, again)
    # an interrupted run left two chunks: only the missing one is encoded
    (tmp_path / "embeddings.npy").unlink()
    for c in range(2):
        np.save(tmp_path / f"chunk-{c:05d}.npy", first[c * 4:(c + 1) * 4])
    resumed = cat.embed_catalog(texts, enc, cache_dir=tmp_path, progress=False)
    assert enc.calls == 4
    np.testing.assert_array_equal(first, resumed)


def test_catalog_embedding_in_worker_processes_resumes_and_equals_one_process(tiny_export,
                                                                              tmp_path):
    """`workers`: the same vectors as one process, chunk by chunk; chunks already in the cache
    (a killed run) are kept, not encoded again, whatever the worker count."""
    from towerlite.runtime import OnnxEncoder

    texts = tiny_sentences(50, seed=3)
    encoder = OnnxEncoder(tiny_export / "model.onnx", max_length=32, threads=2)
    one = cat.embed_catalog(texts, encoder, cache_dir=tmp_path / "one", progress=False, chunk=8)
    two = cat.embed_catalog(texts, encoder, cache_dir=tmp_path / "two", progress=False, chunk=8,
                            workers=2)
    np.testing.assert_allclose(two, one, rtol=0, atol=1e-6)
    # a run killed after two chunks: marked rows show they are read back, not recomputed
    folder = tmp_path / "resumed"
    folder.mkdir()
    marked = np.full((8, one.shape[1]), 0.5, dtype=np.float32)
    np.save(folder / "chunk-00000.npy", marked)
    np.save(folder / "chunk-00003.npy", marked)
    resumed = cat.embed_catalog(texts, encoder, cache_dir=folder, progress=False, chunk=8,
                                workers=2)
    assert (resumed[0:8] == 0.5).all() and (resumed[24:32] == 0.5).all()
    rest = np.r_[8:24, 32:50]
    np.testing.assert_allclose(resumed[rest], one[rest], rtol=0, atol=1e-6)
    assert (folder / "embeddings.npy").is_file() and not list(folder.glob("chunk-*"))


def test_catalog_embedding_takes_cuda_only_where_onnxruntime_has_it(monkeypatch):
    """deploy embeds the catalog on onnxruntime's CUDA provider when this onnxruntime has it
    (onnxruntime-gpu), the CPU otherwise (no GPU here: the CUDA branch is not run)."""
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert cat.embedding_providers()[0] == ("CUDAExecutionProvider" if has_cuda
                                            else "CPUExecutionProvider")
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cat.embedding_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert cat.embedding_providers() == ["CPUExecutionProvider"]


def test_deploy_refuses_a_worker_count_below_one(tmp_path):
    from towerlite.serving.deploy import DeployRequest

    for bad in (0, -2, 1.5):
        with pytest.raises(TowerliteError, match="workers is a whole number of at least 1"):
            DeployRequest("model", tmp_path, workers=bad)
