"""`towerlite bench gpu-encoders` (serving/bench/gpu_pack.py, gpu_encoders.py) on this machine's
CPU: a weightless skeleton of a real export, refilled, runs in onnxruntime like the original, and
the bench's rows and parity numbers are computed from real runs (the CUDA rows need the GPU
machine; docs/benchmarks.md has them)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from towerlite.serving.bench import gpu_pack


@pytest.fixture(scope="module")
def gpu():
    from towerlite.serving.bench import gpu_encoders

    return gpu_encoders


def test_skeleton_keeps_the_graph_and_drops_the_weights(gpu, exported, tmp_path):
    src = exported / "model_int8_dynamic.onnx"
    info = gpu_pack.skeleton(src, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").stat().st_size < src.stat().st_size / 20
    assert info["weights_bytes"] > src.stat().st_size / 2 and info["external_tensors"] > 10
    original = onnx.load(str(src))
    skel = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    assert [n.op_type for n in original.graph.node] == [n.op_type for n in skel.graph.node]
    shapes = lambda m: {t.name: (tuple(t.dims), t.data_type) for t in m.graph.initializer}  # noqa: E731
    assert shapes(original) == shapes(skel)


def test_refilled_skeleton_runs_and_the_bench_reports_it(gpu, exported, tmp_path):
    tokens = [[101, 2000 + i, 2100 + 3 * i, 102] + [3000 + i] * (i % 20) for i in range(40)]
    entry = {"name": "s", "file": "s.onnx", "real_weights": False, "tokens": "s.tokens.npz",
             "pad_id": 0}
    gpu_pack.skeleton(exported / "model.onnx", tmp_path / "s.onnx")
    np.savez(tmp_path / "s.tokens.npz", **{f"{k}_{p}": a for k in ("user", "item")
                                            for p, a in gpu.ragged(tokens).items()})
    path = gpu.materialize(tmp_path, entry)
    assert path.with_name("s.onnx.weights").stat().st_size > 10_000_000
    ids, mask = gpu.pad_batch([np.array(t) for t in tokens], 0, gpu.BUCKETS)
    assert ids.shape == (40, 32) and mask.sum() == sum(len(t) for t in tokens)
    out = gpu.run_batches(gpu.cpu_session(path, 1), ids, mask, 16)
    assert out.shape == (40, 384) and np.isfinite(out).all()
    assert np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-4)  # normalize is inside the graph

    rows = gpu.bench_model(tmp_path, entry, ["CPUExecutionProvider", "NoSuchExecutionProvider"],
                           runs=12, cpu_threads=1)
    cpu, missing = rows
    assert "error" in missing and "error" not in cpu
    assert cpu["parity_vs_reference"]["error_vs_spread"] < 1e-3  # CPU against itself
    assert 0 < cpu["latency_b1"]["p50_ms"] <= cpu["latency_b1"]["p99_ms"]
    assert cpu["catalog"]["texts"] >= 40 and cpu["catalog"]["texts_per_s"] > 0
    assert "| s | CPU |" in gpu.line(cpu)
    json.dumps(rows)  # the report is plain JSON


def test_parity_numbers_see_a_real_difference(gpu):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 16)).astype(np.float32)
    same = gpu.cosines(ref.copy(), ref)
    assert same["mean"] == pytest.approx(1) and \
        same["error_vs_spread"] == pytest.approx(0, abs=1e-6)
    off = gpu.cosines(ref + rng.normal(scale=0.5, size=ref.shape).astype(np.float32), ref)
    assert off["mean"] < 0.99 and off["error_vs_spread"] > 0.1
