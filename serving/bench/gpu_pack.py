"""`towerlite bench gpu-encoders pack`, on this machine: what `bench gpu-encoders run`
(gpu_encoders.py) measures on a GPU machine reached through a 64 MiB file carry. Each model is
written as a skeleton — the graph with every float/int8 weight above 1 KiB moved to an external
file it does not write (speed does not depend on weight values; `run` fills the file) — unless
`:real`, then it travels whole with reference embeddings computed here on the CPU, for parity
against real numbers. Token ids are real: held-out MovieLens + Book-Crossing user texts (the
bench's requests) and catalog item texts, tokenized by each model's own tokenizer.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from towerlite.runtime import load_tokenizer, pad_batch

from .gpu_encoders import cpu_session, ragged, run_batches

DESCRIPTION = (
    "Pack exported encoders for `towerlite bench gpu-encoders run` on another machine: each "
    "--model as a weightless skeleton (or whole, with CPU reference embeddings, when :real), "
    "the token ids of real held-out user texts and catalog item texts, and OUT/manifest.json.")

WEIGHTS_MIN_BYTES = 1024
TEXTS = {"user": 512, "item": 4096}


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
    from towerlite.serving.catalog import catalog_items

    from .inputs import build_requests

    users = build_requests(["movielens", "bookcrossing"], TEXTS["user"]).texts
    items = catalog_items(["movielens", "bookcrossing"])["text"]
    items = items.sample(TEXTS["item"], random_state=0).tolist()
    return {"user": list(users), "item": items}


def tokenize(texts: list[str], tokenizer_json: Path,
             max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of `texts` and the tokenizer's pad id."""
    tok, pad_id = load_tokenizer(tokenizer_json, max_length)
    return [e.ids for e in tok.encode_batch(texts)], pad_id


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", required=True,
                   help="NAME=PATH.onnx[:real] (the export's tokenizer.json and report beside it)")
    p.add_argument("--reference", action="append", default=[], type=lambda s: s.split("=", 1),
                   help="NAME=PATH.onnx: the CPU reference for a :real model (default itself)")
    p.add_argument("--out", required=True, help="folder to write (created)")


def command(args: argparse.Namespace) -> int:
    references = dict(args.reference)
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
            ref = Path(references.get(name, src)) if references else src
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
