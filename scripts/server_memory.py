"""The server's memory with a deployed catalog, idle and after real traffic (docs/serving.md,
Scale): held-out users' texts through `recommend` and then `recommend_fused`, RSS and PSS summed
over Triton and its python stubs, and each process' private (anonymous) memory. Several
repositories in one run, alternated `--repeats` times, so a comparison shares the machine's
state.

    .venv/bin/python scripts/server_memory.py runs/a/portable runs/b/portable \
        --users 400 --repeats 2 --out docs/img/server-memory-DATE.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from towerlite.machine import cpu_info
from towerlite.serving.bench.inputs import held_out_texts
from towerlite.serving.client import Client
from towerlite.serving.triton import start_server


def _private_mb(pid: int) -> float:
    """A process' anonymous memory (its own, not the shared file pages), MB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _memory(srv) -> dict:
    return {"rss_mb": round(srv.rss_bytes() / 2**20), "pss_mb": round(srv.pss_bytes() / 2**20),
            "anonymous_mb_per_process": sorted((_private_mb(p) for p in srv._pids()),
                                               reverse=True)}


def measure(repo: Path, texts: list[str]) -> dict:
    models = [m for m in ("recommend", "recommend_fused") if (repo / m).is_dir()]
    t0 = time.perf_counter()
    with start_server(repo, log_path=Path(tempfile.mkdtemp()) / "triton.log") as srv:
        out = {"ready_s": round(time.perf_counter() - t0, 1), "idle": _memory(srv)}
        for model in models:
            with Client(srv.grpc_url, model=model) as client:
                latencies = []
                for text in texts:
                    start = time.perf_counter()
                    client.recommend(text, k=10)
                    latencies.append((time.perf_counter() - start) * 1e3)
            out[model] = {"p50_ms": round(float(np.percentile(latencies, 50)), 2),
                          "p99_ms": round(float(np.percentile(latencies, 99)), 2)}
        out["after"] = _memory(srv)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("repositories", nargs="+", type=Path, help="portable flavor folders")
    p.add_argument("--users", type=int, default=400,
                   help="held-out users, half MovieLens, half Book-Crossing (default 400)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    texts = [t for dataset in ("movielens", "bookcrossing")
             for t, _ in held_out_texts(dataset, args.users // 2)]
    runs = {str(r): [] for r in args.repositories}
    for repeat in range(args.repeats):
        for repo in args.repositories:
            result = measure(repo, texts)
            runs[str(repo)].append(result)
            print(f"{repo} run {repeat + 1}: idle PSS {result['idle']['pss_mb']} MB, after "
                  f"{len(texts)} requests a model PSS {result['after']['pss_mb']} MB, RSS "
                  f"{result['after']['rss_mb']} MB; " + ", ".join(
                      f"{m} p50/p99 {result[m]['p50_ms']}/{result[m]['p99_ms']} ms"
                      for m in ("recommend", "recommend_fused") if m in result), flush=True)
    report = {"date": time.strftime("%Y-%m-%d"), "users": len(texts), "runs": runs,
              "machine": cpu_info()}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
