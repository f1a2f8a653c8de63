"""`towerlite bench encoders`: one run of the teacher vs the student (PyTorch and every ONNX
variant) vs the peer.

On one list of real mixed held-out texts, at one batch size, token limit and thread count,
with tokenization included, measures sentences/s of:

  * the teacher in PyTorch fp32,
  * the student in PyTorch fp32 (the model the export was made from),
  * every model*.onnx variant in the export folder (through towerlite.runtime.OnnxEncoder),
  * the peer baseline a user would reach for today (peer.py).

Every row is measured with batches of texts of similar length (sorted by token count); the
teacher, the peer and the best student variant are also measured in input order so the table
says what sorting gave. Parity is mean cosine to the row's own fp32 PyTorch model. Prints a
markdown table and a few attribution lines; writes the numbers to a JSON file. Not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.evaluation.parity import parity
from towerlite.files import write_json_atomic
from towerlite.machine import load_average

from .encoders import measure, onnx_variants, param_count, torch_encoder, weights_mb
from .peer import PEER_FILE, PEER_NAME, build_peer, default_peer_dir, load_peer, peer_encoder
from .report import (
    GOAL_COSINE,
    Row,
    attribution,
    flags_text,
    goal_line,
    machine_info,
    table,
    versions,
)
from .texts import mixed_texts

DESCRIPTION = (
    "One-run encoder benchmark: teacher vs student (PyTorch and every ONNX variant) vs the peer "
    "(all-MiniLM-L6-v2 exported and int8-quantized with optimum), sentences/s on the same "
    "held-out mixed texts at one batch size, token limit and thread count, tokenization "
    "included; parity is mean cosine to each row's own fp32 PyTorch model. Prints a markdown "
    "table, attribution lines and the goal; writes EXPORT_DIR/benchmark.json (or --out).")

_START = time.monotonic()
log = logging.getLogger(__name__)


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
        raise TowerliteError(f"{export_dir}: no such export folder (make one with `towerlite "
                             "export --model MODEL --out DIR`)")
    variants = onnx_variants(export_dir)
    if not variants:
        raise TowerliteError(f"{export_dir}: no model*.onnx files (not a `towerlite export` "
                             "output folder)")
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
    log.info(f"{machine['cpu_model']} ({flags_text(machine)}), {machine['usable_cores']} usable "
             f"cores, load average {machine['loadavg_start']}")
    log.info("loading held-out mixed texts")
    texts, per_source = mixed_texts(args.texts)
    batch, max_len, repeats = args.batch_size, args.max_length, args.repeats
    rows: list[Row] = []

    def add(row: Row) -> Row:
        rows.append(row)
        log.info(f"  {row.name} [{row.order}]: {row.sentences_per_s:.1f} sentences/s"
                 + (f", mean cos {row.parity['mean_cosine']:.4f}" if row.parity else ""))
        return row

    log.info(f"teacher PyTorch fp32 ({args.teacher})")
    teacher = SentenceEncoder(args.teacher)
    sps, _ = measure(torch_encoder(teacher, max_len, batch, True), texts, repeats)
    teacher_row = add(Row("teacher PyTorch fp32", "teacher", "sorted", sps,
                          weights_mb(teacher.source)))
    sps, _ = measure(torch_encoder(teacher, max_len, batch, False), texts, repeats)
    add(Row("teacher PyTorch fp32", "teacher", "input", sps, teacher_row.mb))
    del teacher

    log.info(f"student PyTorch fp32 ({spec})")
    student = SentenceEncoder(spec)
    student_params = param_count(student)
    sps, student_ref = measure(torch_encoder(student, max_len, batch, True), texts, repeats)
    add(Row("student PyTorch fp32", "student", "sorted", sps, weights_mb(student.source)))

    minilm_folder = resolve_model("student-start")
    same_as_peer = Path(student.source).resolve() == Path(minilm_folder).resolve()
    if same_as_peer:
        minilm_ref, peer_params = student_ref, student_params
    else:
        log.info("peer PyTorch fp32 (all-MiniLM-L6-v2), the peer's parity reference")
        minilm = SentenceEncoder("student-start")
        peer_params = param_count(minilm)
        sps, minilm_ref = measure(torch_encoder(minilm, max_len, batch, True), texts, repeats)
        add(Row("peer PyTorch fp32 (all-MiniLM-L6-v2)", "peer", "sorted", sps,
                weights_mb(minilm.source)))
        del minilm
    del student

    encoders = {}
    for name, path in variants:
        log.info(f"student ONNX {name} ({path.name})")
        enc = OnnxEncoder(path, max_length=max_len, threads=args.threads)
        encoders[name] = enc
        sps, emb = measure(lambda t, e=enc: e.encode(t, batch, sort_by_length=True), texts, repeats)
        add(Row(f"student ONNX {name}", "variant", "sorted", sps,
                round(path.stat().st_size / 1e6, 1), parity(student_ref, emb),
                "student PyTorch fp32"))

    peer_dir = args.peer_dir or default_peer_dir()
    recipe = build_peer(minilm_folder, peer_dir)
    peer_model, peer_tok = load_peer(peer_dir, args.threads)
    peer_mb = round((peer_dir / PEER_FILE).stat().st_size / 1e6, 1)
    sps, emb = measure(peer_encoder(peer_model, peer_tok, max_len, batch, True), texts, repeats)
    peer_row = add(Row("peer: " + PEER_NAME, "peer", "sorted", sps, peer_mb,
                       parity(minilm_ref, emb), "all-MiniLM-L6-v2 PyTorch fp32"))
    sps, _ = measure(peer_encoder(peer_model, peer_tok, max_len, batch, False), texts, repeats)
    add(Row(peer_row.name, "peer", "input", sps, peer_mb, peer_row.parity, peer_row.parity_ref))

    candidates = [r for r in rows if r.kind == "variant"]
    passing = [r for r in candidates if r.parity and r.parity["mean_cosine"] >= GOAL_COSINE]
    best = max(passing or candidates, key=lambda r: r.sentences_per_s, default=None)
    if best:
        log.info(f"best student variant: {best.name}; measuring it in input order")
        enc = encoders[best.name.removeprefix("student ONNX ")]
        sps, _ = measure(lambda t: enc.encode(t, batch, sort_by_length=False), texts, repeats)
        add(Row(best.name, "variant", "input", sps, best.mb, best.parity, best.parity_ref))

    for r in rows:
        r.ratio_to_teacher = round(r.sentences_per_s / teacher_row.sentences_per_s, 2)
        r.sentences_per_s = round(r.sentences_per_s, 1)
    machine["loadavg_end"] = load_average()
    goal_text, goal = goal_line(best, teacher_row, peer_row)
    return {"settings": settings,
            "texts": {"count": len(texts), "per_source": per_source,
                      "split": "held-out (towerlite.data.splits), interleaved by source"},
            "export_dir": str(args.export_dir), "teacher": args.teacher, "student": spec,
            "peer": recipe, "machine": machine, "versions": versions(),
            "rows": [asdict(r) for r in rows], "best_variant": best.name if best else None,
            "goal": goal, "goal_text": goal_text,
            "attribution": attribution(rows, best, student_params, peer_params),
            "seconds": round(time.monotonic() - _START, 1)}


def _at_least(low: int):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{text!r}: an integer ≥ {low}")
        return value
    return check


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--export-dir", required=True, type=Path,
                   help="a `towerlite export` output folder")
    p.add_argument("--teacher", default="teacher",
                   help="teacher model (default: teacher = all-mpnet-base-v2)")
    p.add_argument("--student-model", default=None,
                   help="the student's PyTorch model (default: the one named in "
                        "EXPORT_DIR/export_report.json)")
    p.add_argument("--texts", type=_at_least(2), default=512,
                   help="held-out mixed texts (default 512)")
    p.add_argument("--batch-size", type=_at_least(1), default=32)
    p.add_argument("--max-length", type=_at_least(8), default=128,
                   help="tokens per text (default 128)")
    p.add_argument("--threads", type=_at_least(1), default=2,
                   help="PyTorch and onnxruntime threads (default 2)")
    p.add_argument("--repeats", type=_at_least(1), default=2,
                   help="timed passes per row, best kept (default 2)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file (default: EXPORT_DIR/benchmark.json)")
    p.add_argument("--peer-dir", type=Path, default=None,
                   help="cache folder for the peer's optimum export (default: under the "
                        "towerlite cache)")


def command(args: argparse.Namespace) -> int:
    result = run(args)
    out = args.out or args.export_dir / "benchmark.json"
    write_json_atomic(out, result)
    s, m = result["settings"], result["machine"]
    print(f"{result['texts']['count']} held-out mixed texts, batch {s['batch_size']}, "
          f"≤{s['max_length']} tokens, {s['threads']} threads, best of {s['repeats']}, "
          f"tokenization included;\n"
          f"{m['cpu_model']} ({flags_text(m)}; flags {' '.join(m['cpu_flags'])}), "
          f"load {m['loadavg_start']} → {m['loadavg_end']}\n")
    print(table([Row(**r) for r in result["rows"]]))
    print()
    for line in result["attribution"]:
        print("- " + line)
    print("\n" + result["goal_text"])
    print(f"wrote {out}")
    return 0
