"""One-run encoder benchmark: teacher vs student (PyTorch and every ONNX variant) vs the peer.

    python -m towerlite.export.benchmark --export-dir runs/export/student

On one list of real mixed held-out texts, at one batch size, token limit and thread count,
with tokenization included, measures sentences/s of:

  * the teacher in PyTorch fp32,
  * the student in PyTorch fp32 (the model the export was made from),
  * every model*.onnx variant in the export folder (through export.runtime.OnnxEncoder),
  * the peer baseline a user would reach for today: all-MiniLM-L6-v2 exported with optimum
    (`ORTModelForFeatureExtraction(export=True)`) and dynamically quantized with
    `ORTQuantizer` + `AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)`,
    run through optimum with mean pooling and L2 normalization in numpy.

Every row is measured with batches of texts of similar length (sorted by token count); the
teacher, the peer and the best student variant are also measured in input order so the table
says what sorting gave. Parity is mean cosine to the row's own fp32 PyTorch model. Prints a
markdown table and a few attribution lines; writes the numbers to a JSON file. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError
from towerlite.evaluation.parity import parity
from towerlite.files import write_json_atomic
from towerlite.machine import cpu_info, usable_cores
from towerlite.runtime import VARIANT_FILES, pad_batch

from .speed import throughput

PEER_NAME = "MiniLM-L6 ONNX int8 (optimum avx512_vnni)"  # the recipe in full: build_peer()
PEER_FILE = "model_quantized.onnx"
GOAL_RATIO, GOAL_COSINE = 30.0, 0.99
_START = time.monotonic()


def log(msg: str) -> None:
    print(f"[bench {time.monotonic() - _START:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- texts


def mixed_texts(n: int) -> tuple[list[str], dict]:
    """`n` held-out corpus texts, interleaved source by source (so input order is a real mix),
    each source's share spread over its domains; sources short of n/k are topped up by the rest."""
    from collections import Counter

    from towerlite.data import load_corpus
    from towerlite.data.splits import balanced_sample

    held = balanced_sample(load_corpus(), per_source=n, seed=0, heldout=True)
    by_source: dict[str, list] = {}
    for rec in held:
        by_source.setdefault(rec.source, []).append(rec)
    picked, queues = [], [list(reversed(v)) for v in by_source.values()]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    if len(picked) < n:
        log(f"only {len(picked)} held-out texts available (asked for {n})")
    return [r.text for r in picked], dict(Counter(r.source for r in picked))


# ---------------------------------------------------------------- encoders


def batched(run: Callable[[np.ndarray, np.ndarray], np.ndarray], tokenize: Callable[[list[str]], list[list[int]]],
            pad_id: int, batch_size: int, sort_by_length: bool) -> Callable[[list[str]], np.ndarray]:
    """texts → embeddings in input order, the same loop as OnnxEncoder.encode: tokenize once,
    optionally order by token count, pad each batch to its longest text, run."""
    def encode(texts: list[str]) -> np.ndarray:
        tokens = tokenize(texts)
        order = np.argsort([len(t) for t in tokens], kind="stable") if sort_by_length else np.arange(len(texts))
        out = None
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            emb = run(*pad_batch([tokens[j] for j in idx], pad_id))
            if out is None:
                out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        return out
    return encode


def hf_tokenize(tokenizer, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    return lambda texts: tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def torch_encoder(encoder, max_length: int, batch_size: int, sort_by_length: bool):
    """A towerlite.models.SentenceEncoder's module behind the shared batching loop."""
    import torch

    def run(ids, mask):
        with torch.inference_mode():
            return encoder.module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
    return batched(run, hf_tokenize(encoder.tokenizer, max_length), encoder.tokenizer.pad_token_id,
                   batch_size, sort_by_length)


def peer_session_options(threads: int):
    """The same onnxruntime session settings export.runtime.session() gives our variants."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def peer_encoder(model, tokenizer, max_length: int, batch_size: int, sort_by_length: bool):
    """optimum's ORTModelForFeatureExtraction + mean pooling + L2 normalization in numpy."""
    def run(ids, mask):
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in model.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(model(**feed).last_hidden_state, dtype=np.float32)
        m = mask[..., None].astype(np.float32)
        emb = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    return batched(run, hf_tokenize(tokenizer, max_length), tokenizer.pad_token_id, batch_size, sort_by_length)


# ---------------------------------------------------------------- the peer's export


def default_peer_dir() -> Path:
    from towerlite.home import writable_home

    try:
        return writable_home() / "benchmark" / "peer-all-MiniLM-L6-v2-int8-avx512vnni"
    except TowerliteError:
        return Path(tempfile.gettempdir()) / "towerlite-peer-all-MiniLM-L6-v2-int8-avx512vnni"


def build_peer(minilm_folder: str, peer_dir: Path) -> dict:
    """The standard optimum recipe, cached in `peer_dir` (built in a staging folder, then renamed)."""
    recipe = {"export": "ORTModelForFeatureExtraction.from_pretrained(all-MiniLM-L6-v2, export=True)",
              "quantize": "ORTQuantizer.from_pretrained(...).quantize(AutoQuantizationConfig.avx512_vnni("
                          "is_static=False, per_channel=False))",
              "source": minilm_folder, "dir": str(peer_dir), "file": PEER_FILE}
    if (peer_dir / PEER_FILE).is_file():
        log(f"peer: reusing {peer_dir / PEER_FILE}")
        return recipe | {"cached": True, "quantization": _ort_quantization(peer_dir)}
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    log(f"peer: exporting {minilm_folder} with optimum and quantizing (avx512_vnni, dynamic) → {peer_dir}")
    peer_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=peer_dir.name + ".", dir=peer_dir.parent))
    ORTModelForFeatureExtraction.from_pretrained(minilm_folder, export=True).save_pretrained(staging)
    AutoTokenizer.from_pretrained(minilm_folder).save_pretrained(staging)
    quantizer = ORTQuantizer.from_pretrained(staging)
    quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False), save_dir=staging)
    if not (staging / PEER_FILE).is_file():
        raise TowerliteError(f"optimum's quantizer did not write {staging / PEER_FILE}")
    if peer_dir.exists():  # a partial earlier build without the quantized file
        import shutil
        shutil.rmtree(peer_dir)
    staging.replace(peer_dir)
    return recipe | {"cached": False, "quantization": _ort_quantization(peer_dir)}


def _ort_quantization(peer_dir: Path) -> dict | None:
    """What optimum recorded it quantized (ort_config.json), e.g. which operator types."""
    try:
        return json.loads((peer_dir / "ort_config.json").read_text()).get("quantization")
    except (OSError, ValueError):
        return None


def load_peer(peer_dir: Path, threads: int):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    model = ORTModelForFeatureExtraction.from_pretrained(peer_dir, file_name=PEER_FILE,
                                                         session_options=peer_session_options(threads))
    return model, AutoTokenizer.from_pretrained(peer_dir)


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    name: str
    kind: str  # "teacher" | "student" | "variant" | "peer"
    order: str  # "sorted" (batches by token count) | "input"
    sentences_per_s: float
    mb: float | None = None
    parity: dict | None = None  # vs the row's own fp32 PyTorch model
    parity_ref: str | None = None
    ratio_to_teacher: float | None = None


def measure(encode, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """sentences/s (best of `repeats`, export.speed.throughput) and the embeddings of the last pass."""
    last: dict[str, np.ndarray] = {}

    def recording(t: list[str]) -> np.ndarray:
        out = encode(t)
        if len(t) == len(texts):
            last["emb"] = out
        return out
    return throughput(recording, texts, repeats), last["emb"]


def weights_mb(folder: str | Path) -> float | None:
    files = [p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1) if files else None


def onnx_variants(export_dir: Path) -> list[tuple[str, Path]]:
    """(variant name, path) of every model*.onnx, in the order towerlite.runtime.VARIANT_FILES names them."""
    names = {f: v for v, f in VARIANT_FILES.items()}
    found = sorted(export_dir.glob("model*.onnx"))
    rank = list(VARIANT_FILES.values())
    found.sort(key=lambda p: (rank.index(p.name) if p.name in rank else len(rank), p.name))
    return [(names.get(p.name, p.stem), p) for p in found]


def param_count(encoder) -> int:
    return sum(p.numel() for p in encoder.module.parameters())


# ---------------------------------------------------------------- report


def machine_info() -> dict:
    """towerlite.machine.cpu_info (CPU model, vector flags, cores: int8 speed depends on
    avx512_vnni/amx more than on anything else), the usable cores and the load average."""
    return {**cpu_info(), "usable_cores": usable_cores(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def flags_text(machine: dict) -> str:
    """'avx2 only' or 'avx512_vnni' style: the int8 path the CPU offers."""
    int8 = [f for f in ("amx_int8", "avx512_vnni", "avx_vnni") if f in machine["cpu_flags"]]
    return ", ".join(int8) if int8 else ("avx2 only (no VNNI)" if "avx2" in machine["cpu_flags"]
                                         else "no avx2")


def versions() -> dict:
    out = {}
    for pkg in ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "optimum", "optimum-onnx", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def table(rows: list[Row]) -> str:
    lines = ["| row | batches | sentences/s | × teacher | mean cos vs own fp32 PyTorch | MB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cos = (f"{r.parity['mean_cosine']:.4f} (min {r.parity['min_cosine']:.3f})" if r.parity
               else "n/a" if r.kind == "teacher" else "(reference)")
        lines.append(f"| {r.name} | {'length-sorted' if r.order == 'sorted' else 'input order'} "
                     f"| {r.sentences_per_s:.1f} | {r.ratio_to_teacher:.1f}× | {cos} "
                     f"| {'' if r.mb is None else f'{r.mb:.1f}'} |")
    return "\n".join(lines)


def attribution(rows: list[Row], best: Row | None, student_params: int, peer_params: int | None) -> list[str]:
    """One line per source of speed: what fusions, int8 kernels, sorting and a smaller student gave."""
    def get(name, order="sorted"):
        return next((r for r in rows if r.name == name and r.order == order), None)

    def ratio(a, b):
        return f"{a.sentences_per_s / b.sentences_per_s:.2f}×" if a and b else "n/a"

    lines = []
    st, fp32, opt, i8 = (get("student PyTorch fp32"), get("student ONNX fp32"), get("student ONNX opt"),
                         get("student ONNX int8_dynamic"))
    lines.append(f"ONNX runtime (student ONNX fp32 vs student PyTorch fp32): {ratio(fp32, st)}")
    lines.append(f"fusions (opt vs fp32): {ratio(opt, fp32)}")
    lines.append(f"int8 kernels (int8_dynamic vs fp32, the graph it is quantized from): {ratio(i8, fp32)}"
                 f"; vs opt: {ratio(i8, opt)}")
    for name in ("teacher PyTorch fp32", best.name if best else None, "peer: " + PEER_NAME):
        if name:
            lines.append(f"padding (length-sorted vs input order), {name}: {ratio(get(name), get(name, 'input'))}")
    peer = get("peer: " + PEER_NAME)
    if best and peer:
        lines.append(f"best student ({best.name}) vs the peer: {ratio(best, peer)}")
    minilm = get("peer PyTorch fp32 (all-MiniLM-L6-v2)")
    if peer_params and student_params < peer_params:
        lines.append(f"smaller student ({student_params / 1e6:.1f}M vs MiniLM-L6 {peer_params / 1e6:.1f}M "
                     f"parameters), PyTorch fp32: {ratio(st, minilm)}")
    elif peer_params:
        lines.append(f"student size: {student_params / 1e6:.1f}M parameters, not smaller than MiniLM-L6 "
                     f"({peer_params / 1e6:.1f}M): no gain from size")
    return lines


def goal_line(best: Row | None, teacher: Row, peer: Row | None) -> tuple[str, dict]:
    if best is None:
        return "goal: no student ONNX variant measured", {"met": False}
    ratio = best.sentences_per_s / teacher.sentences_per_s
    cos = best.parity["mean_cosine"] if best.parity else float("nan")
    ahead = peer is not None and best.sentences_per_s > peer.sentences_per_s
    goal = {"best_variant": best.name, "ratio_to_teacher": round(ratio, 2), "ratio_ok": ratio >= GOAL_RATIO,
            "mean_cosine": round(cos, 5), "parity_ok": cos >= GOAL_COSINE, "ahead_of_peer": ahead,
            "met": ratio >= GOAL_RATIO and cos >= GOAL_COSINE and ahead}
    text = (f"goal: {best.name} at {ratio:.1f}× the teacher (≥{GOAL_RATIO:.0f}×: {'yes' if goal['ratio_ok'] else 'NO'}), "
            f"mean cos {cos:.4f} (≥{GOAL_COSINE}: {'yes' if goal['parity_ok'] else 'NO'}), "
            f"ahead of the peer: {'yes' if ahead else 'NO'} → {'MET' if goal['met'] else 'not met'}")
    return text, goal


# ---------------------------------------------------------------- main


def student_spec(export_dir: Path, given: str | None) -> str:
    if given:
        return given
    report = export_dir / "export_report.json"
    try:
        return json.loads(report.read_text())["source_model"]
    except (OSError, ValueError, KeyError) as exc:
        raise TowerliteError(f"{report}: cannot read the exported model's name ({exc}); "
                             "pass --student-model DIR-or-name") from exc


def check_export_dir(export_dir: Path) -> list[tuple[str, Path]]:
    if not export_dir.is_dir():
        raise TowerliteError(f"{export_dir}: no such export folder (make one with `towerlite export "
                             "--model MODEL --out DIR`)")
    variants = onnx_variants(export_dir)
    if not variants:
        raise TowerliteError(f"{export_dir}: no model*.onnx files (not a `towerlite export` output folder)")
    if not (export_dir / "tokenizer.json").is_file():
        raise TowerliteError(f"{export_dir}: no tokenizer.json beside the ONNX files")
    return variants


def run(args: argparse.Namespace) -> dict:
    import torch

    from towerlite.models import SentenceEncoder, resolve_model
    from towerlite.runtime import OnnxEncoder

    variants = check_export_dir(args.export_dir)
    spec = student_spec(args.export_dir, args.student_model)
    torch.set_num_threads(args.threads)
    settings = {"texts": args.texts, "batch_size": args.batch_size, "max_length": args.max_length,
                "threads": args.threads, "repeats": args.repeats, "tokenization_included": True}
    machine = machine_info()
    log(f"{machine['cpu_model']} ({flags_text(machine)}), {machine['usable_cores']} usable cores, "
        f"load average {machine['loadavg_start']}")
    log("loading held-out mixed texts")
    texts, per_source = mixed_texts(args.texts)
    B, L, R = args.batch_size, args.max_length, args.repeats
    rows: list[Row] = []

    def add(row: Row) -> Row:
        rows.append(row)
        log(f"  {row.name} [{row.order}]: {row.sentences_per_s:.1f} sentences/s"
            + (f", mean cos {row.parity['mean_cosine']:.4f}" if row.parity else ""))
        return row

    log(f"teacher PyTorch fp32 ({args.teacher})")
    teacher = SentenceEncoder(args.teacher, log=log)
    sps, _ = measure(torch_encoder(teacher, L, B, True), texts, R)
    teacher_row = add(Row("teacher PyTorch fp32", "teacher", "sorted", sps, weights_mb(teacher.source)))
    sps, _ = measure(torch_encoder(teacher, L, B, False), texts, R)
    add(Row("teacher PyTorch fp32", "teacher", "input", sps, teacher_row.mb))
    del teacher

    log(f"student PyTorch fp32 ({spec})")
    student = SentenceEncoder(spec, log=log)
    student_params = param_count(student)
    sps, student_ref = measure(torch_encoder(student, L, B, True), texts, R)
    add(Row("student PyTorch fp32", "student", "sorted", sps, weights_mb(student.source)))

    minilm_folder = resolve_model("student-start", log=log)
    same_as_peer = Path(student.source).resolve() == Path(minilm_folder).resolve()
    if same_as_peer:
        minilm_ref, peer_params = student_ref, student_params
    else:
        log("peer PyTorch fp32 (all-MiniLM-L6-v2), the peer's parity reference")
        minilm = SentenceEncoder("student-start", log=log)
        peer_params = param_count(minilm)
        sps, minilm_ref = measure(torch_encoder(minilm, L, B, True), texts, R)
        add(Row("peer PyTorch fp32 (all-MiniLM-L6-v2)", "peer", "sorted", sps, weights_mb(minilm.source)))
        del minilm
    del student

    encoders = {}
    for name, path in variants:
        log(f"student ONNX {name} ({path.name})")
        enc = OnnxEncoder(path, max_length=L, threads=args.threads)
        encoders[name] = enc
        sps, emb = measure(lambda t, e=enc: e.encode(t, B, sort_by_length=True), texts, R)
        add(Row(f"student ONNX {name}", "variant", "sorted", sps, round(path.stat().st_size / 1e6, 1),
                parity(student_ref, emb), "student PyTorch fp32"))

    peer_dir = args.peer_dir or default_peer_dir()
    recipe = build_peer(minilm_folder, peer_dir)
    peer_model, peer_tok = load_peer(peer_dir, args.threads)
    peer_mb = round((peer_dir / PEER_FILE).stat().st_size / 1e6, 1)
    sps, emb = measure(peer_encoder(peer_model, peer_tok, L, B, True), texts, R)
    peer_row = add(Row("peer: " + PEER_NAME, "peer", "sorted", sps, peer_mb, parity(minilm_ref, emb),
                       "all-MiniLM-L6-v2 PyTorch fp32"))
    sps, _ = measure(peer_encoder(peer_model, peer_tok, L, B, False), texts, R)
    add(Row(peer_row.name, "peer", "input", sps, peer_mb, peer_row.parity, peer_row.parity_ref))

    candidates = [r for r in rows if r.kind == "variant"]
    passing = [r for r in candidates if r.parity and r.parity["mean_cosine"] >= GOAL_COSINE]
    best = max(passing or candidates, key=lambda r: r.sentences_per_s, default=None)
    if best:
        log(f"best student variant: {best.name}; measuring it in input order")
        enc = encoders[best.name.removeprefix("student ONNX ")]
        sps, _ = measure(lambda t: enc.encode(t, B, sort_by_length=False), texts, R)
        add(Row(best.name, "variant", "input", sps, best.mb, best.parity, best.parity_ref))

    for r in rows:
        r.ratio_to_teacher = round(r.sentences_per_s / teacher_row.sentences_per_s, 2)
        r.sentences_per_s = round(r.sentences_per_s, 1)
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    goal_text, goal = goal_line(best, teacher_row, peer_row)
    return {"settings": settings, "texts": {"count": len(texts), "per_source": per_source,
                                            "split": "held-out (towerlite.data.splits), interleaved by source"},
            "export_dir": str(args.export_dir), "teacher": args.teacher, "student": spec,
            "peer": recipe, "machine": machine, "versions": versions(),
            "rows": [asdict(r) for r in rows], "best_variant": best.name if best else None, "goal": goal,
            "goal_text": goal_text, "attribution": attribution(rows, best, student_params, peer_params),
            "seconds": round(time.monotonic() - _START, 1)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m towerlite.export.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("--export-dir", required=True, type=Path, help="a `towerlite export` output folder")
    p.add_argument("--teacher", default="teacher", help="teacher model (default: teacher = all-mpnet-base-v2)")
    p.add_argument("--student-model", default=None,
                   help="the student's PyTorch model (default: the one named in EXPORT_DIR/export_report.json)")
    p.add_argument("--texts", type=int, default=512, help="held-out mixed texts (default 512)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--threads", type=int, default=2, help="PyTorch and onnxruntime threads (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="timed passes per row, best kept (default 2)")
    p.add_argument("--out", type=Path, default=None, help="JSON file (default: EXPORT_DIR/benchmark.json)")
    p.add_argument("--peer-dir", type=Path, default=None,
                   help="cache folder for the peer's optimum export (default: under the towerlite cache)")
    args = p.parse_args(argv)
    if args.texts < 2 or args.batch_size < 1 or args.max_length < 8 or args.threads < 1 or args.repeats < 1:
        p.error("--texts ≥ 2, --batch-size ≥ 1, --max-length ≥ 8, --threads ≥ 1, --repeats ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except TowerliteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.export_dir / "benchmark.json"
    write_json_atomic(out, result)
    s, m = result["settings"], result["machine"]
    print(f"{result['texts']['count']} held-out mixed texts, batch {s['batch_size']}, ≤{s['max_length']} tokens, "
          f"{s['threads']} threads, best of {s['repeats']}, tokenization included;\n"
          f"{m['cpu_model']} ({flags_text(m)}; flags {' '.join(m['cpu_flags'])}), "
          f"load {m['loadavg_start']} → {m['loadavg_end']}\n")
    print(table([Row(**r) for r in result["rows"]]))
    print()
    for line in result["attribution"]:
        print("- " + line)
    print("\n" + result["goal_text"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
