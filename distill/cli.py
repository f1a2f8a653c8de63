"""`towerlite distill` and `python -m towerlite.distill` (also under
`torchrun --nproc_per_node N -m towerlite.distill`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from towerlite.errors import TowerliteError

from .config import PRESETS, DistillConfig

DESCRIPTION = (
    "Distill the teacher (default all-mpnet-base-v2) into small students on a mix of real "
    "corpora (Brown genres, IMDB/Rotten Tomatoes reviews, WordNet glosses, MovieLens and "
    "Book-Crossing item texts, user-history texts from the training interactions). Teacher "
    "embeddings are cached in $TOWERLITE_HOME/embedding-cache; training checkpoints in "
    "OUT/checkpoints, so an interrupted run resumes when started again with the same config. "
    "Writes OUT/candidates/<name>/ (Hugging Face folders), OUT/model/ (the served candidate) and "
    "OUT/distill_report.json, and prints the evaluation table.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, PRESETS, "default",
                         "default: the full comparison (~40 min on 2 cores); tiny: a 2-layer "
                         "student, a few hundred texts (a minute or two)", "runs/distill",
                         'lr=5e-5 --set \'mix={"brown": 100}\'')
    p.add_argument("--teacher", help="teacher model: registry name, HF folder or hub id")
    p.add_argument("--epochs", type=int)


def add_config_arguments(p: argparse.ArgumentParser, presets: dict, default: str, preset_help: str,
                         out_default: str, set_example: str) -> None:
    """The flags every config-driven command shares: --preset, --config, --out, --set."""
    p.add_argument("--preset", choices=sorted(presets), default=default, help=preset_help)
    p.add_argument("--config", type=Path,
                   help="JSON file of config fields, applied over the preset")
    p.add_argument("--out", type=Path, help=f"output folder (default {out_default})")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                   help=f"any config field, e.g. --set {set_example}")


def build_config(args: argparse.Namespace, presets=PRESETS, cls=DistillConfig,
                 direct=("out", "teacher", "epochs")):
    """The preset, then the --config file, then each --set, then the direct flags."""
    data = dict(presets[args.preset])
    if args.config:
        own = cls.read(args.config)  # checked alone, so errors name the file
        data.update(own)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise TowerliteError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            data[key] = value  # a bare string
    for key in direct:
        if getattr(args, key) is not None:
            data[key] = str(getattr(args, key)) if key == "out" else getattr(args, key)
    return cls.from_json(data)


def fmt(x, digits=3) -> str:
    """A report number for the summary tables: `digits` decimals, "-" when there is none."""
    return "-" if x is None else f"{x:.{digits}f}"


def summary_table(report: dict) -> str:
    rows = report["evaluation"]
    sources = [s for s in next(iter(rows.values()))["agreement"] if s != "all"]
    lines = ["| model | dim | PyTorch sent/s | Spearman | top-10 overlap | cos to teacher "
             "| Recall@10 | NDCG@10 | MRR | serves teacher's top-10 | Recall@10, teacher items |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        agreement, retrieval = row["agreement"]["all"], row["retrieval"]
        asymmetric = row.get("retrieval_teacher_items", {}).get("recall@10")
        lines.append(f"| {name} | {row['dim']} | {row['pytorch_sentences_per_s']} | "
                     f"{fmt(agreement['spearman'])} | {fmt(agreement['top10_overlap'])} | "
                     f"{fmt(agreement['mean_cosine'])} | {fmt(retrieval['recall@10'], 4)} | "
                     f"{fmt(retrieval['ndcg@10'], 4)} | {fmt(retrieval.get('mrr'), 4)} | "
                     f"{fmt(retrieval.get('teacher_top10_overlap'))} | {fmt(asymmetric, 4)} |")
    lines += ["", "Spearman of pairwise cosines with the teacher, per held-out source:", "",
              "| model | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    for name, row in rows.items():
        per_source = " | ".join(fmt(row["agreement"][s]["spearman"]) for s in sources)
        lines.append(f"| {name} | " + per_source + " |")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    from .pipeline import run

    cfg = build_config(args)
    report = run(cfg)
    if report:  # rank 0 only under torchrun
        print(summary_table(report))
        print(f"\nserved candidate: {report['served']} → {report['model_folder']}; "
              f"report: {Path(cfg.out) / 'distill_report.json'}; "
              f"{report['timings']['total_s']} s")
    return 0

