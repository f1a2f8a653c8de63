"""What `--set precision=bf16` saves a history training step: the default tower's steps over
MovieLens' real training windows (200 items, batch 64, full softmax over the 3,883 movies),
fp32 and bf16 alternated in one process, each its own `Trainer` (model, optimizers, windows)
from the same seed (random text vectors: a step's time does not depend on their values).
Prints ms a step, min / median / max, and the CPU's bf16 support; writes the times as JSON.
What bf16 costs in ranking is a training run's question (docs/quality.md), not this script's.

    .venv/bin/python scripts/history_precision_bench.py --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from towerlite.evaluation.cases import build_cases
from towerlite.files import write_json_atomic
from towerlite.machine import cpu_info
from towerlite.sequential import PRECISIONS, HistoryConfig
from towerlite.sequential_train import Trainer, batch_loss, batches, trim_padding


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=8, help="steps a precision takes in turn")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/precision-bench.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = build_cases("movielens", users=0, max_history=10)
    n = len(cases.item_ids)
    base = HistoryConfig()
    text = np.random.default_rng(0).normal(size=(n, 384)).astype(np.float32)
    runs = {p: Trainer(replace(base, precision=p), cases.train_sequences, n, text, progress=False)
            for p in PRECISIONS}
    order = batches(runs["fp32"].lengths, base.batch_size, base.seed, 0)
    times = {precision: [] for precision in runs}
    step = 0
    for _ in range(args.repeats + 1):  # the first round warms up and is not counted
        first = step
        for precision, run in runs.items():
            run.model.train()
            for i in range(first, first + args.steps):
                batch = trim_padding(run.data[torch.as_tensor(order[i % len(order)])])
                t0 = time.perf_counter()
                loss = batch_loss(run.cfg, run.model, batch, n, run.adjust, run.domains)
                run.opt.zero_grad()
                loss.backward()
                run.opt.step()
                if first:
                    times[precision].append(round(1000 * (time.perf_counter() - t0), 1))
        step += args.steps
    info = cpu_info()
    print(f"| MovieLens step ({len(order)} an epoch, batch {base.batch_size}, {n:,} items, "
          f"{args.threads} threads) | ms min / median / max |")
    print("|---|---|")
    for precision, ms in times.items():
        print(f"| {precision} | {min(ms):.0f} / {np.median(ms):.0f} / {max(ms):.0f} |")
    print(f"bf16 / fp32 median: {np.median(times['bf16']) / np.median(times['fp32']):.2f}; "
          f"cpu: {info['cpu_model']}, avx512_bf16: {'avx512_bf16' in info['cpu_flags']}")
    write_json_atomic(args.out, {"steps_per_epoch": len(order), "threads": args.threads,
                                 "ms": times, "machine": info})


if __name__ == "__main__":
    main()
