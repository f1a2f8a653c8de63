"""The history tower's ONNX graph, asked one query in its last block against every position
(docs/benchmarks.md): a saved tower's sequence model exported both ways from the same weights
— `SequenceEncoder.forward` (today's graph: the newest position's state alone) and the states
at every position with the newest one taken (the graph towers were saved with until
2026-12-02) — then timed with onnxruntime, one thread, over histories of several lengths,
the two alternated, and their user vectors compared.

    .venv/bin/python scripts/history_graph_bench.py runs/h-ml30/model --repeats 5 \
        --out docs/img/history-graph-DATE.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from towerlite.machine import cpu_info
from towerlite.sequential import WEIGHTS_FILE, SavedTower, build_model, export_graph


def encoder_of(tower: SavedTower):
    """The tower's sequence model with its trained weights (the item table is not needed)."""
    import torch

    cfg = tower.config
    text = None
    if cfg.use_text:
        text = np.zeros((1, np.load(tower.folder / "adapter.npz")["mean"].shape[-1]), np.float32)
    model = build_model(cfg, 1, text, np.ones(1, bool))
    weights = torch.load(tower.folder / WEIGHTS_FILE, weights_only=True)
    model.encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in weights.items()
                                   if k.startswith("encoder.")})
    return model.encoder.eval()


def every_position(encoder):
    """The graph before 2026-12-02: every block at every position, the newest state taken."""
    import torch

    class EveryPosition(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, vectors, mask):
            return self.encoder.states(vectors, mask)[:, -1]

    return EveryPosition().eval()


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("tower", type=Path, help="a `towerlite history` model folder")
    p.add_argument("--lengths", default="1,10,50,200")
    p.add_argument("--calls", type=int, default=300, help="runs a length, per graph and repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    tower = SavedTower.load(args.tower)
    encoder, width = encoder_of(tower), tower.width
    lengths = [min(int(n), tower.config.max_len) for n in args.lengths.split(",")]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        graphs = {"last position": Path(tmp) / "last.onnx",
                  "every position": Path(tmp) / "every.onnx"}
        export_graph(encoder, tower.config.max_len, width, graphs["last position"])
        export_graph(every_position(encoder), tower.config.max_len, width, graphs["every position"])
        sessions = {name: session(path) for name, path in graphs.items()}
        rows, gaps = [], {}
        for length in lengths:
            feed = {"item_vectors": rng.normal(size=(1, length, width)).astype(np.float32),
                    "mask": np.ones((1, length), np.float32)}
            users = {n: s.run(None, feed)[0] for n, s in sessions.items()}
            gaps[length] = float(np.abs(users["last position"] - users["every position"]).max())
            times = {n: [] for n in sessions}
            for _ in range(args.repeats):
                for name, s in sessions.items():
                    start = time.perf_counter()
                    for _ in range(args.calls):
                        s.run(None, feed)
                    times[name].append((time.perf_counter() - start) / args.calls * 1e6)
            for name, t in times.items():
                rows.append({"length": length, "graph": name, "us_min": min(t), "us_max": max(t)})
                print(f"length {length:>4}  {name:<15} {min(t):7.0f}–{max(t):7.0f} µs a call",
                      flush=True)
            print(f"length {length:>4}  largest difference of the user vectors {gaps[length]:.2e}")
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tower": str(args.tower),
                                        "rows": rows, "max_abs_difference": gaps,
                                        "machine": cpu_info()}, indent=1))


if __name__ == "__main__":
    main()
