"""`towerlite export` and `python -m towerlite.export`."""

from __future__ import annotations

import argparse
from pathlib import Path

from towerlite.runtime import VARIANT_FILES

from .pipeline import DEFAULT_MIN_COSINE, DEFAULT_VARIANTS, ExportConfig, run


def add_arguments(p: argparse.ArgumentParser) -> None:
    defaults = ", ".join(f"{name}={value}" for name, value in DEFAULT_MIN_COSINE.items())
    p.add_argument("--model", required=True,
                   help="encoder: registry name (teacher, student-start, …), HF folder or hub id")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {','.join(VARIANT_FILES)} (default: all)")
    p.add_argument("--max-length", type=int,
                   help="tokens per text (default: the model's own max_seq_length, at most 128)")
    p.add_argument("--min-cosine", action="append", default=[], metavar="VARIANT=X",
                   help="parity gate: minimum mean cosine to the PyTorch model "
                        f"(defaults: {defaults})")

    p.add_argument("--threads", type=int, default=2, help="onnxruntime threads for measurements")
    p.add_argument("--no-speed", action="store_true", help="skip the in-process speed measurements")


DESCRIPTION = ("Export a Hugging Face sentence encoder to ONNX (input_ids, attention_mask → "
               "L2-normalized sentence_embedding; pooling and projection inside the graph), build "
               "the optimized, INT8 and FP16 variants, check each against the PyTorch model on "
               "held-out texts from every corpus domain, and measure in-process speed. Writes "
               "OUT/model*.onnx, the tokenizer files and OUT/export_report.json. Exits non-zero "
               "when a variant misses its parity threshold.")


def command(args: argparse.Namespace) -> int:
    min_cosine = dict(DEFAULT_MIN_COSINE)
    for item in args.min_cosine:
        name, _, value = item.partition("=")
        min_cosine[name] = float(value)
    cfg = ExportConfig(model=args.model, out=args.out,
                       variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
                       max_length=args.max_length, min_cosine=min_cosine, threads=args.threads,
                       measure_speed=not args.no_speed)
    report = run(cfg)
    print(f"wrote {len(report['variants'])} variants and export_report.json to {args.out}")
    return 0
