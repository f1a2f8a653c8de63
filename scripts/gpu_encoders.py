"""GPU figures for exported encoders: onnxruntime's CUDA execution provider (the engine the
native flavor's `onnxruntime_onnx` models run on) and TensorRT's where its libraries exist —
batch-1 latency (the user tower online), batch-8 latency (a dynamic batch at concurrency 8),
catalog throughput (the item tower offline), and parity against the CPU.

The GPU machine is reached through a 64 MiB file carry, so a model travels without its weights
unless parity against real numbers needs them: `pack` writes the graph with every float/int8
weight above 1 KiB moved to an external file it does not write (speed does not depend on weight
values), `bench` fills that file with seeded random values of the same shapes and dtypes.

    # here: models, real token ids, reference embeddings → .dev/gpu (git-ignored)
    python scripts/gpu_encoders.py pack --out .dev/gpu \\
        --model student-fp16=runs/export/model_fp16.onnx:real --model teacher-fp32=t/model.onnx ...
    # there (onnxruntime-gpu importable):
    python scripts/gpu_encoders.py bench --dir .dev/gpu --out gpu_encoders.json

`pack` reads real texts (held-out MovieLens + Book-Crossing user texts, catalog item texts);
`bench` needs numpy, onnx, onnxruntime and tokenizers (this checkout's export.runtime).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from towerlite.machine import cpu_info  # noqa: E402
from towerlite.runtime import load_tokenizer, pad_batch  # noqa: E402 - after the path
from towerlite.serving.repository import RepositorySpec  # noqa: E402

WEIGHTS_MIN_BYTES = 1024
BUCKETS = RepositorySpec.native_buckets  # the lengths the native flavor's tokenizer pads to
TEXTS = {"user": 512, "item": 4096}


# ---------------------------------------------------------------- pack (this machine)

def skeleton(src: Path, dst: Path) -> dict:
    """`src` with its large float/int8 initializers marked external in `dst.name + '.weights'`
    (not written): the graph is the exported one, the weights are filled in where it runs."""
    import onnx
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(src))
    kinds = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
             onnx.TensorProto.UINT8}
    offset, moved = 0, 0
    for t in model.graph.initializer:
        raw = onnx.numpy_helper.to_array(t).tobytes()
        if t.data_type not in kinds or len(raw) < WEIGHTS_MIN_BYTES:
            continue
        for field in ("float_data", "int32_data"):  # some tensors keep typed fields, not raw bytes
            t.ClearField(field)
        t.raw_data = raw
        set_external_data(t, location=dst.name + ".weights", offset=offset, length=len(raw))
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        offset += len(raw)
        moved += 1
    onnx.save(model, str(dst))
    return {"weights_bytes": offset, "external_tensors": moved}


def real_texts() -> dict[str, list[str]]:
    from towerlite.serving.bench.inputs import build_requests
    from towerlite.serving.catalog import catalog_items

    users = build_requests(["movielens", "bookcrossing"], TEXTS["user"]).texts
    items = catalog_items(["movielens", "bookcrossing"])["text"]
    items = items.sample(TEXTS["item"], random_state=0).tolist()
    return {"user": list(users), "item": items}


def tokenize(texts: list[str], tokenizer_json: Path, max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of `texts` and the tokenizer's pad id."""
    tok, pad_id = load_tokenizer(tokenizer_json, max_length)
    return [e.ids for e in tok.encode_batch(texts)], pad_id


def pack(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    texts = real_texts()
    manifest = {"models": [], "texts": {k: len(v) for k, v in texts.items()}}
    for spec in args.model:
        name, _, rest = spec.partition("=")
        path, _, how = rest.partition(":")
        src = Path(path)
        report = json.loads((src.parent / "export_report.json").read_text())
        max_length = int(report["max_length"])
        entry = {"name": name, "file": f"{name}.onnx", "source": str(src), "max_length": max_length,
                 "real_weights": how == "real", "tokens": f"{name}.tokens.npz"}
        if how == "real":
            shutil.copyfile(src, out / entry["file"])
            ref = Path(args.reference.get(name, src)) if args.reference else src
            entry["reference"] = {"file": f"{name}.reference.npy", "model": str(ref)}
        else:
            entry.update(skeleton(src, out / entry["file"]))
        tokens = {}
        for kind, t in texts.items():
            tokens[kind], entry["pad_id"] = tokenize(t, src.parent / "tokenizer.json", max_length)
        np.savez_compressed(out / entry["tokens"], **{
            f"{k}_{part}": arr for k, v in tokens.items() for part, arr in ragged(v).items()})
        if how == "real":
            ids, mask = pad_batch(tokens["user"], entry["pad_id"])
            emb = run_batches(cpu_session(ref), ids, mask, 64)
            np.save(out / entry["reference"]["file"], emb)
        manifest["models"].append(entry)
        print(f"packed {name}: {(out / entry['file']).stat().st_size / 1e6:.1f} MB", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return 0


def ragged(seqs: list[list[int]]) -> dict[str, np.ndarray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    return {"flat": np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs]),
            "lengths": lengths}


def unragged(npz, kind: str) -> list[np.ndarray]:
    ends = np.cumsum(npz[f"{kind}_lengths"])
    return np.split(npz[f"{kind}_flat"], ends[:-1])


# ---------------------------------------------------------------- bench (the GPU machine)

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
    return {"mean": float(cos.mean()), "min": float(cos.min()), "finite": bool(np.isfinite(a).all()),
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
            "p99_ms": float(np.percentile(ms, 99)), "texts_per_s": batch * runs / float(ms.sum() / 1e3)}


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


def bench_model(folder: Path, entry: dict, providers: list[str], runs: int, cpu_threads: int) -> list[dict]:
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
        row["catalog"] = throughput(sess, items if provider != "CPUExecutionProvider" else items[:1024],
                                    pad_id, 256)
        rows.append(row)
        print(line(row), flush=True)
    return rows


def line(r: dict) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['provider'].replace('ExecutionProvider', '')} | {r['error'][:60]} | | | | |"
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
    info = {**cpu_info(), "python": platform.python_version(), "onnxruntime": ort.__version__,
            "available_providers": ort.get_available_providers()}
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def bench(args: argparse.Namespace) -> int:
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
          "(batch 256) | parity cos mean / min | error / spread |\n|---|---|---|---|---|---|---|", flush=True)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="models (skeletons unless :real), token ids, references")
    pk.add_argument("--model", action="append", required=True,
                    help="NAME=PATH.onnx[:real] (the export's tokenizer.json and report beside it)")
    pk.add_argument("--reference", action="append", default=[], type=lambda s: s.split("=", 1),
                    help="NAME=PATH.onnx: the CPU reference for a :real model (default itself)")
    pk.add_argument("--out", required=True)
    bn = sub.add_parser("bench", help="time and check every packed model on each provider")
    bn.add_argument("--dir", required=True)
    bn.add_argument("--out", default="gpu_encoders.json")
    bn.add_argument("--providers", default="CUDAExecutionProvider,TensorrtExecutionProvider,"
                                           "CPUExecutionProvider")
    bn.add_argument("--only", default="", help="comma-separated model names")
    bn.add_argument("--runs", type=int, default=300)
    bn.add_argument("--cpu-threads", type=int, default=0, help="0 = onnxruntime's default (all cores)")
    args = p.parse_args(argv)
    if args.cmd == "pack":
        args.reference = dict(args.reference)
        return pack(args)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
