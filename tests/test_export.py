"""Export of a real small model (all-MiniLM-L6-v2): ONNX equals the PyTorch pipeline, every
variant loads and embeds, the parity gate catches a broken variant, bad input is refused."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from towerlite.errors import TowerliteError
from towerlite.evaluation.parity import parity
from towerlite.export.pipeline import DEFAULT_MIN_COSINE, ExportConfig, ParityError, gate, run
from towerlite.models import SentenceEncoder
from towerlite.runtime import VARIANT_FILES, OnnxEncoder

FILES = VARIANT_FILES  # every variant export can write, and its file name

TEXTS = ["[movie] Heat (1995). Action|Crime|Thriller",
         "short",
         "",
         "The jury said it believes these two offices should be combined to achieve greater "
         "efficiency and reduce the cost of administration. " * 3,
         "[book] Clara Callan by Richard Bruce Wright (2001). HarperFlamingo Canada",
         "dog, domestic dog: a member of the genus Canis",
         "I rented I AM CURIOUS-YELLOW from my video store because of all the controversy."]


@pytest.fixture(scope="module")
def exported(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    # the static-int8 threshold relaxed: it is not a default variant (parity ≈0.9 on MiniLM)
    cfg = ExportConfig(model="student-start", out=out, variants=tuple(FILES),
                       parity_texts_per_source=16, calibration_texts_per_source=8,
                       measure_speed=False,
                       min_cosine={**DEFAULT_MIN_COSINE, "int8_static": 0.8})
    return out, run(cfg)


@pytest.fixture(scope="module")
def reference(cache):
    return SentenceEncoder("student-start")


@pytest.mark.parametrize("batch_size", [1, 7])
def test_onnx_equals_pytorch(exported, reference, batch_size):
    out, _ = exported
    onnx_enc = OnnxEncoder(out / "model.onnx", max_length=128)
    ours = onnx_enc.encode(TEXTS, batch_size=batch_size, sort_by_length=False)
    ref = reference.encode(TEXTS, batch_size=batch_size, max_length=128)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_padding_does_not_change_an_embedding(exported):
    out, _ = exported
    enc = OnnxEncoder(out / "model.onnx", max_length=128)
    alone = enc.encode([TEXTS[1]], batch_size=1)
    padded = enc.encode([TEXTS[1], TEXTS[3]], batch_size=2)[:1]  # padded to the long text
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_every_variant_loads_and_embeds(exported):
    out, report = exported
    assert set(report["variants"]) == set(FILES)
    for name, entry in report["variants"].items():
        emb = OnnxEncoder(out / entry["file"]).encode(TEXTS)
        assert emb.shape == (len(TEXTS), 384), name
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3, err_msg=name)
        assert entry["parity_vs_pytorch"]["texts"] == report["parity_texts"]["count"]
    assert report["variants"]["fp32"]["parity_vs_pytorch"]["mean_cosine"] > 0.9999
    assert report["variants"]["int8_dynamic"]["bytes"] < 0.7 * report["variants"]["fp32"]["bytes"]
    saved = json.loads((out / "export_report.json").read_text())
    assert saved["graph"]["pooling_inside"] and saved["versions"]["onnxruntime"]
    assert set(saved["parity_texts"]["per_source"]) >= {"brown", "wordnet", "imdb", "movielens-1m"}


def test_parity_gate_fails_a_broken_variant(exported, tmp_path):
    out, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # break the attention and FFN weights: noise on top
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and w.shape[0] == 384 and "embeddings" not in init.name:
            noisy = (w + rng.normal(0, 0.05, w.shape)).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    (tmp_path / "tokenizer.json").write_bytes((out / "tokenizer.json").read_bytes())
    good = OnnxEncoder(out / "model.onnx").encode(TEXTS)
    bad = OnnxEncoder(broken).encode(TEXTS)
    result = parity(good, bad)
    message = gate("int8_dynamic", result, 0.99)
    assert message is not None and message.startswith("int8_dynamic: mean cosine")
    assert "short by" in message
    assert gate("fp32", parity(good, good), 0.9999) is None


# -- the tiny-model tier: the same checks on a 2-layer, 64-d random BERT (tests/conftest.py) ----
# Every variant, the default gate; the parity texts synthetic (no corpus, no real weights).

TINY_TEXTS = TEXTS + [TEXTS[3] * 2]  # and one past the 128 tokens export truncates at


@pytest.fixture(scope="module")
def tiny_reference(tiny_model):
    return SentenceEncoder(str(tiny_model))


def test_tiny_export_writes_every_variant_and_each_passes_the_default_gate(tiny_export):
    report = json.loads((tiny_export / "export_report.json").read_text())
    assert set(report["variants"]) == set(FILES) and not report["failures"]
    assert report["max_length"] == 128 and report["dim"] == 64  # the folder's own length, capped
    assert report["graph"]["pooling_inside"] and report["graph"]["normalized"]
    assert {"tokenizer.json", "vocab.txt"} <= set(report["tokenizer_files"])
    for name, entry in report["variants"].items():
        assert entry["passed"] and entry["min_mean_cosine"] == DEFAULT_MIN_COSINE[name], name
        assert entry["parity_vs_pytorch"]["texts"] == report["parity_texts"]["count"]
        emb = OnnxEncoder(tiny_export / entry["file"]).encode(TINY_TEXTS)
        assert emb.shape == (len(TINY_TEXTS), 64), name
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3, err_msg=name)
    variants = report["variants"]
    assert variants["fp32"]["parity_vs_pytorch"]["mean_cosine"] > 0.9999
    assert {"Attention", "SkipLayerNormalization"} <= set(variants["opt"]["settings"]["fused"])
    for name in ("int8_dynamic", "int8_static", "fp16"):
        assert variants[name]["bytes"] < variants["fp32"]["bytes"], name


@pytest.mark.parametrize("batch_size", [1, 7])
def test_tiny_onnx_equals_pytorch(tiny_export, tiny_reference, batch_size):
    onnx_enc = OnnxEncoder(tiny_export / "model.onnx", max_length=128)
    ours = onnx_enc.encode(TINY_TEXTS, batch_size=batch_size, sort_by_length=False)
    ref = tiny_reference.encode(TINY_TEXTS, batch_size=batch_size, max_length=128)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_tiny_padding_does_not_change_an_embedding(tiny_export):
    enc = OnnxEncoder(tiny_export / "model.onnx", max_length=128)
    alone = enc.encode([TINY_TEXTS[1]], batch_size=1)
    padded = enc.encode([TINY_TEXTS[1], TINY_TEXTS[-1]], batch_size=2)[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_tiny_dynamic_int8_is_quantized_and_stays_close(tiny_export, tiny_reference):
    def weight_matmuls(path):  # MatMul nodes by op type, those with a weight (initializer) input
        graph = onnx.load(str(path)).graph
        weights = {i.name for i in graph.initializer}
        return Counter(n.op_type for n in graph.node
                       if n.op_type.startswith("MatMul") and weights & set(n.input))

    fp32, int8 = weight_matmuls(tiny_export / "model.onnx"), weight_matmuls(
        tiny_export / FILES["int8_dynamic"])
    assert fp32["MatMul"] == 12  # 2 layers × (Q, K, V, attention out, FFN in, FFN out)
    assert int8["MatMulInteger"] == fp32["MatMul"] and int8["MatMul"] == 0  # every weight
    ref = tiny_reference.encode(TINY_TEXTS, max_length=128)
    int8 = OnnxEncoder(tiny_export / FILES["int8_dynamic"]).encode(TINY_TEXTS)
    result = parity(ref, int8)
    assert DEFAULT_MIN_COSINE["int8_dynamic"] <= result["mean_cosine"] < 1 - 1e-6, result
    assert np.abs(int8 - ref).max() > 1e-4  # really a different computation from fp32


def test_tiny_parity_gate_fails_a_broken_variant(tiny_export, tmp_path):
    model = onnx.load(str(tiny_export / "model.onnx"))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:  # noise on the attention and FFN weights
        w = numpy_helper.to_array(init)
        if w.ndim == 2 and 64 in w.shape and "embeddings" not in init.name:
            noisy = (w + rng.normal(0, 0.05, w.shape)).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
    broken = tmp_path / "model.onnx"
    onnx.save(model, str(broken))
    (tmp_path / "tokenizer.json").write_bytes((tiny_export / "tokenizer.json").read_bytes())
    good = OnnxEncoder(tiny_export / "model.onnx").encode(TINY_TEXTS)
    bad = OnnxEncoder(broken).encode(TINY_TEXTS)
    message = gate("int8_dynamic", parity(good, bad), 0.99)
    assert message is not None and message.startswith("int8_dynamic: mean cosine")
    assert "short by" in message
    assert gate("fp32", parity(good, good), 0.9999) is None


def test_tiny_default_gate_makes_export_fail_loudly(tiny_model, tmp_path, monkeypatch):
    from conftest import tiny_parity_texts

    from towerlite.export import pipeline

    monkeypatch.setattr(pipeline, "_texts", lambda cfg: tiny_parity_texts())
    cfg = ExportConfig(model=str(tiny_model), out=tmp_path, variants=("fp32",),
                       measure_speed=False, min_cosine={"fp32": 1.5})
    with pytest.raises(ParityError, match=r"fp32: mean cosine 1.0000 < 1.5"):
        run(cfg)
    assert (tmp_path / "export_report.json").is_file()  # the evidence is kept


def test_tiny_bad_input_is_refused_before_long_work(tiny_model, tmp_path):
    with pytest.raises(TowerliteError, match="not a Hugging Face model folder"):
        run(ExportConfig(model=str(tmp_path), out=tmp_path / "o"))
    with pytest.raises(TowerliteError, match=r"unknown variant\(s\) \['int4'\]"):
        run(ExportConfig(model=str(tiny_model), out=tmp_path / "o", variants=("int4",)))
    with pytest.raises(TowerliteError, match="no variants asked for"):
        run(ExportConfig(model=str(tiny_model), out=tmp_path / "o", variants=()))
    with pytest.raises(TowerliteError, match="max_length must be at least 8"):
        run(ExportConfig(model=str(tiny_model), out=tmp_path / "o", max_length=4))
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TowerliteError, match="not writable"):
        run(ExportConfig(model=str(tiny_model), out=blocker / "o"))
