"""One training step of the history tower over a large catalog, three ways, alternated:
the whole item table with AdamW (before 2026-12-02), only the step's rows with AdamW, and only
the step's rows with the ID vectors under SparseAdam (what `negatives=N` trains with now:
towerlite.sequential_train.Optimizers). Random text vectors and Book-Crossing-like short windows.

    .venv/bin/python scripts/history_step_bench.py --out runs/step-bench.json
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from towerlite.files import write_json_atomic
from towerlite.machine import cpu_info
from towerlite.sequential import HistoryConfig, build_model
from towerlite.sequential_train import Optimizers, sampled_loss, windows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=271_379)
    p.add_argument("--negatives", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--out", default="runs/step-bench.json")
    args = p.parse_args()
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    n = args.items
    text = rng.normal(size=(n, 384)).astype(np.float32)
    warm = rng.random(n) < 0.08
    seqs = [list(rng.integers(0, n, size=rng.integers(2, 8))) for _ in range(64)]
    batch = torch.as_tensor(windows(seqs, 50)[:64])
    inputs, targets = batch[:, :-1], batch[:, 1:]
    keep = (inputs >= 0) & (targets >= 0)
    dense, sparse = HistoryConfig(max_len=50), HistoryConfig(max_len=50, negatives=args.negatives)
    setups = {}
    for name, cfg, rows_only in (("whole table, AdamW", dense, False),
                                 ("its rows, AdamW", dense, True),
                                 ("its rows, SparseAdam for the ID vectors", sparse, True)):
        model = build_model(cfg, n, text, warm).train()
        opt = Optimizers(cfg, model) if cfg.negatives else torch.optim.AdamW(model.parameters())
        setups[name] = (model, opt, cfg, rows_only)
    times = {name: [] for name in setups}
    for _ in range(args.repeats):
        for name, (model, opt, cfg, rows_only) in setups.items():
            t0 = time.perf_counter()
            sample = torch.randint(0, n, (args.negatives,))
            if rows_only:  # what train runs
                loss = sampled_loss(cfg, model, batch, sample)
            else:  # the whole table computed, its step's rows read
                states, table = model(inputs)
                rows = table[torch.cat([targets[keep], sample])]
                loss = torch.nn.functional.cross_entropy(states[keep] @ rows.T,
                                                         torch.arange(int(keep.sum())))
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[name].append(round(1000 * (time.perf_counter() - t0), 1))
    print(f"| step over {n:,} items, {args.negatives:,} negatives | ms min / median / max |")
    print("|---|---|")
    for name, ms in times.items():
        print(f"| {name} | {min(ms):.0f} / {np.median(ms):.0f} / {max(ms):.0f} |")
    write_json_atomic(args.out, {"items": n, "negatives": args.negatives, "ms": times,
                                 "machine": cpu_info()})


if __name__ == "__main__":
    main()
