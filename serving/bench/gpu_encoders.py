"""`towerlite bench gpu-encoders run`: GPU figures for exported encoders — onnxruntime's CUDA
execution provider (the engine the native flavor's `onnxruntime_onnx` models run on) and
TensorRT's where its libraries exist: batch-1 latency (the user tower online), batch-8 latency
(a dynamic batch at concurrency 8), catalog throughput (the item tower offline), and parity
against the CPU.

It runs on the GPU machine, over what `towerlite bench gpu-encoders pack` (gpu_pack.py) wrote
here: the GPU machine is reached through a 64 MiB file carry, so a model travels without its
weights unless parity against real numbers needs them, and `run` fills each skeleton's weights
file with seeded random values of the same shapes and dtypes (speed does not depend on weight
values). It reads no dataset: where it runs, this checkout installed and onnxruntime-gpu (for
the CUDA and TensorRT rows) are enough.

    # here: models, real token ids, reference embeddings → .dev/gpu (git-ignored)
    towerlite bench gpu-encoders pack --out .dev/gpu \\
        --model student-fp16=runs/export/model_fp16.onnx:real --model teacher-fp32=t/model.onnx ...
    # there (onnxruntime-gpu importable):
    towerlite bench gpu-encoders run --dir .dev/gpu --out gpu_encoders.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from towerlite.machine import cpu_info, nvidia_smi
from towerlite.runtime import pad_batch
from towerlite.serving.repository import RepositorySpec

DESCRIPTION = (
    "Time and check every encoder `bench gpu-encoders pack` packed, on each execution provider "
    "(CUDA, TensorRT, CPU): batch-1 and batch-8 latency at the native flavor's length buckets, "
    "catalog throughput (batch 256, texts sorted by length) and parity against the CPU "
    "reference. Prints a markdown table; writes --out (JSON) after each model.")

BUCKETS = RepositorySpec.native_buckets  # the lengths the native flavor's tokenizer pads to


def ragged(seqs: list[list[int]]) -> dict[str, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    return {"flat": np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]),
            "lengths": lengths}


def unragged(npz, kind: str) -> list[np.ndarray]:
    ends = np.cumsum(npz[f"{kind}_lengths"])
    return np.split(npz[f"{kind}_flat"], ends[:-1])


def materialize(folder: Path, entry: dict, seed: int = 0) -> Path:
    """Write the skeleton's weights file: normal(0, 0.02) floats (1 + that for 1-D tensors
    not named bias, the LayerNorm scales, so activations stay in range), uniform int8/uint8."""
    import onnx

    path = folder / entry["file"]
    if entry["real_weights"]:
        return path
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(seed)
    dtypes = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
              onnx.TensorProto.INT8: np.int8, onnx.TensorProto.UINT8: np.uint8}
    with open(path.with_name(path.name + ".weights"), "wb") as f:
        for t in model.graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in t.external_data}
            dtype, shape = dtypes[t.data_type], tuple(t.dims)
            if np.issubdtype(dtype, np.floating):
                scale = len(shape) == 1 and "bias" not in t.name
                values = rng.normal(0, 0.02, shape) + (1.0 if scale else 0.0)
            else:
                values = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, shape)
            f.seek(int(info["offset"]))
            f.write(values.astype(dtype).tobytes())
    return path


def cpu_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def gpu_session(path: Path, provider: str):
    """A session on `provider`, first with CPU fallback forbidden (so the report says whether
    every node runs on the GPU), else with it allowed."""
    import onnxruntime as ort

    options = {"TensorrtExecutionProvider": {"trt_fp16_enable": True,
                                             "trt_engine_cache_enable": False}}.get(provider, {})
    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    try:
        return ort.InferenceSession(str(path), so, providers=[(provider, options)]), True
    except Exception:  # noqa: BLE001 - any refusal means some node needs the CPU
        sess = ort.InferenceSession(str(path), ort.SessionOptions(),
                                    providers=[(provider, options), "CPUExecutionProvider"])
        if sess.get_providers()[0] != provider:
            raise RuntimeError(f"{provider} not used (got {sess.get_providers()})") from None
        return sess, False


def feed(sess, ids: np.ndarray, mask: np.ndarray) -> dict:
    """The inputs `sess` takes (some exports have no attention_mask)."""
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in names}


def run_batches(sess, ids: np.ndarray, mask: np.ndarray, batch: int) -> np.ndarray:
    outs = [sess.run(None, feed(sess, ids[s:s + batch], mask[s:s + batch]))[0]
            for s in range(0, len(ids), batch)]
    return np.concatenate(outs).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    """Row-wise cosine of `a` against the reference `b`; how alike different texts' reference
    embeddings are (`between_texts`: random weights give near-1, where cosine parity says little);
    and the error against the spread between texts (mean |a - b| / mean |b - mean(b)|), which
    stays meaningful there."""
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # noqa: E731
    a, b = unit(a), unit(b)
    cos = (a * b).sum(1)
    pairs = b[:64] @ b[:64].T
    spread = np.linalg.norm(b - b.mean(0), axis=1).mean()
    return {"mean": float(cos.mean()), "min": float(cos.min()),
            "finite": bool(np.isfinite(a).all()),
            "between_texts": float(pairs[~np.eye(len(pairs), dtype=bool)].mean()),
            "error_vs_spread": float(np.linalg.norm(a - b, axis=1).mean() / max(spread, 1e-12))}


def latency(sess, seqs: list[np.ndarray], pad_id: int, batch: int, runs: int) -> dict:
    """Per-call ms over `runs` calls, each a batch of consecutive texts padded to the native
    flavor's next length bucket, after a warm-up call at every bucket (Triton's model warmup)."""
    feeds = [feed(sess, *pad_batch([seqs[(i * batch + j) % len(seqs)] for j in range(batch)],
                                    pad_id, BUCKETS)) for i in range(runs)]
    for f in {f["input_ids"].shape: f for f in feeds}.values():
        for _ in range(3):
            sess.run(None, f)
    times = []
    for f in feeds:
        t = time.perf_counter()
        sess.run(None, f)
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"batch": batch, "runs": runs, "p50_ms": float(np.median(ms)),
            "p99_ms": float(np.percentile(ms, 99)),
            "texts_per_s": batch * runs / float(ms.sum() / 1e3)}


def throughput(sess, seqs: list[np.ndarray], pad_id: int, batch: int,
               min_seconds: float = 1.0) -> dict:
    """Catalog embedding: texts sorted by length (as deploy does), batches of `batch`, the
    whole set again until `min_seconds` have passed."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    feeds = [feed(sess, *pad_batch([seqs[i] for i in order[s:s + batch]], pad_id))
             for s in range(0, len(order), batch)]
    for f in feeds:  # warm-up: every shape once
        sess.run(None, f)
    t, done = time.perf_counter(), 0
    while not done or time.perf_counter() - t < min_seconds:
        for f in feeds:
            sess.run(None, f)
        done += len(seqs)
    s = time.perf_counter() - t
    return {"batch": batch, "texts": done, "seconds": s, "texts_per_s": done / s}


def bench_model(folder: Path, entry: dict, providers: list[str], runs: int,
                cpu_threads: int) -> list[dict]:
    path = materialize(folder, entry)
    npz = np.load(folder / entry["tokens"])
    users, items = unragged(npz, "user"), unragged(npz, "item")
    pad_id = entry["pad_id"]
    ids, mask = pad_batch(users, pad_id)
    reference = (np.load(folder / entry["reference"]["file"]) if entry["real_weights"]
                 else run_batches(cpu_session(path), ids, mask, 64))
    rows = []
    for provider in providers:
        row = {"model": entry["name"], "provider": provider, "real_weights": entry["real_weights"]}
        try:
            if provider == "CPUExecutionProvider":
                sess, row["all_nodes_on_provider"] = cpu_session(path, cpu_threads), True
            else:
                sess, row["all_nodes_on_provider"] = gpu_session(path, provider)
        except Exception as e:  # noqa: BLE001 - recorded, the other providers still run
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
            rows.append(row)
            print(f"{entry['name']:>16} {provider}: {row['error']}", flush=True)
            continue
        row["parity_vs_reference"] = cosines(run_batches(sess, ids, mask, 64), reference)
        row["latency_b1"] = latency(sess, users, pad_id, 1, runs)
        row["latency_b8"] = latency(sess, users, pad_id, 8, max(runs // 4, 30))
        catalog = items if provider != "CPUExecutionProvider" else items[:1024]
        row["catalog"] = throughput(sess, catalog, pad_id, 256)
        rows.append(row)
        print(line(row), flush=True)
    return rows


def line(r: dict) -> str:
    if "error" in r:
        return (f"| {r['model']} | {r['provider'].replace('ExecutionProvider', '')} "
                f"| {r['error'][:60]} | | | | |")
    p = r["parity_vs_reference"]
    return (f"| {r['model']} | {r['provider'].replace('ExecutionProvider', '')}"
            f"{'' if r['all_nodes_on_provider'] else ' (+CPU nodes)'} "
            f"| {r['latency_b1']['p50_ms']:.2f} / {r['latency_b1']['p99_ms']:.2f} "
            f"| {r['latency_b8']['p50_ms']:.2f} / {r['latency_b8']['p99_ms']:.2f} "
            f"| {r['catalog']['texts_per_s']:,.0f} | {p['mean']:.5f} / {p['min']:.5f} "
            f"| {p['error_vs_spread']:.4f} |")


def machine() -> dict:
    import onnxruntime as ort

    # the CPU rows (and the CPU side of every GPU row) depend on its vector flags
    return {**cpu_info(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "available_providers": ort.get_available_providers(),
            "gpu": nvidia_smi("name,driver_version,memory.total")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", required=True, help="the folder `bench gpu-encoders pack` wrote")
    p.add_argument("--out", default="gpu_encoders.json", help="report (default gpu_encoders.json)")
    p.add_argument("--providers", default="CUDAExecutionProvider,TensorrtExecutionProvider,"
                                          "CPUExecutionProvider",
                   help="onnxruntime execution providers, comma-separated, each measured in turn")
    p.add_argument("--only", default="", help="comma-separated model names")
    p.add_argument("--runs", type=int, default=300, help="batch-1 calls timed (default 300)")
    p.add_argument("--cpu-threads", type=int, default=0,
                   help="0 = onnxruntime's default (all cores)")


def command(args: argparse.Namespace) -> int:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels, where installed
        ort.preload_dlls()
    folder = Path(args.dir)
    manifest = json.loads((folder / "manifest.json").read_text())
    wanted = [p.strip() for p in args.providers.split(",") if p.strip()]
    result = {"machine": machine(), "settings": {"runs": args.runs, "cpu_threads": args.cpu_threads,
                                                 "texts": manifest["texts"]}, "rows": []}
    print(json.dumps(result["machine"]), flush=True)
    print("| model | provider | batch 1 p50 / p99 ms | batch 8 p50 / p99 ms | catalog texts/s "
          "(batch 256) | parity cos mean / min | error / spread |\n|---|---|---|---|---|---|---|",
          flush=True)
    for entry in manifest["models"]:
        if args.only and entry["name"] not in args.only.split(","):
            continue
        result["rows"] += bench_model(folder, entry, wanted, args.runs, args.cpu_threads)
        out = Path(args.out)
        with tempfile.NamedTemporaryFile("w", dir=out.parent or ".", delete=False) as f:
            json.dump(result, f, indent=1)
        os.replace(f.name, out)
    print("\n".join(line(r) for r in result["rows"]))
    return 0
