"""`towerlite finetune` and `python -m towerlite.distill.finetune.cli` (also under torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_config_arguments, build_config, fmt
from .config import PRESETS, FinetuneConfig

DESCRIPTION = (
    "Fine-tune an encoder as both towers on the training interactions (MovieLens-1M and/or "
    "Book-Crossing; the held-out 10% of users, whom `towerlite eval` scores, are never read): "
    "user history text → next liked item, symmetric InfoNCE with logQ-corrected in-batch "
    "negatives and a bank of catalog items. Checkpoints in OUT/checkpoints (a rerun with the "
    "same config resumes); writes OUT/model/ (export and deploy take it) and "
    "OUT/finetune_report.json, and prints start vs fine-tuned on held-out texts and users.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, PRESETS, "multi",
                         "multi: both datasets (the default recipe); fast: the same on 3 layers at "
                         "64 tokens (the latency-bound served student); movies / books: one "
                         "domain; teacher: the large model; demo: the demo's few minutes; tiny: a "
                         "2-layer model, a few steps (tests)",
                         "runs/finetune", 'temperature=0.1 --set \'datasets={"movielens": 1}\'')
    p.add_argument("--start",
                   help="start model: registry name, HF folder (e.g. a distilled student)")
    p.add_argument("--steps", type=int)


def summary_table(report: dict) -> str:
    lines = ["| model | Spearman vs teacher (held-out texts) | top-10 overlap "
             "| MovieLens Recall@10 [95% CI] | NDCG@10 | MRR |", "|---|---|---|---|---|---|"]
    for name, row in report["evaluation"].items():
        agreement, retrieval = row["agreement"]["all"], row["retrieval"]
        ci = retrieval.get("recall@10_ci95") or [None, None]
        lines.append(f"| {name} | {fmt(agreement['spearman'])} | "
                     f"{fmt(agreement['top10_overlap'])} | {fmt(retrieval['recall@10'], 4)} "
                     f"[{fmt(ci[0], 3)}, {fmt(ci[1], 3)}] | {fmt(retrieval['ndcg@10'], 4)} | "
                     f"{fmt(retrieval.get('mrr'), 4)} |")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    from .train import run

    cfg = build_config(args, PRESETS, FinetuneConfig, ("out", "start", "steps"))
    report = run(cfg)
    if report:  # rank 0 only under torchrun
        if "evaluation" in report:
            print(summary_table(report))
        print(f"\nfine-tuned model: {report['model_folder']}; "
              f"report: {Path(cfg.out) / 'finetune_report.json'}; "
              f"{report['timings']['total_s']} s")
    return 0


if __name__ == "__main__":
    from towerlite.entry import standalone

    sys.exit(standalone("python -m towerlite.distill.finetune.cli", DESCRIPTION, add_arguments,
                        command))

