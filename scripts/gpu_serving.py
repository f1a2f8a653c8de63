"""Serve a deployed repository on the pip-installed Triton and measure it with perf_analyzer
over a saved request set: how the served GPU rows of docs/benchmarks.md were taken (the portable
flavor deployed with `--spec encoder_device='"gpu"'`, onnxruntime-gpu in the Python the python
backend runs), on a machine that has neither the datasets nor this project installed.

    # here: the bench's request texts (held-out users of both datasets), saved
    python scripts/gpu_serving.py texts --out .dev/serve/texts.json
    # there: the repository, this checkout on PYTHONPATH, tritonclient's perf_analyzer unpacked
    python scripts/gpu_serving.py run --repository R --texts .dev/serve/texts.json \\
        --perf-analyzer /tmp/tc/tritonclient/bin/perf_analyzer --out results.json

`run` starts the server with serving.triton.launch (every model in R), drives `--model` at
each concurrency with serving.bench's perf_analyzer engine for `--duration` seconds, and writes
the levels, the server's CPU seconds a request, its RSS and the GPU's memory in use.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def save_texts(args: argparse.Namespace) -> int:
    from towerlite.serving.bench.inputs import build_requests

    requests = build_requests(["movielens", "bookcrossing"], args.count)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"texts": requests.texts, "k": requests.k,
                                          "fingerprint": requests.fingerprint}))
    print(f"{len(requests.texts)} texts, fingerprint {requests.fingerprint} → {args.out}")
    return 0


def gpu_memory_mib() -> str | None:
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(args: argparse.Namespace) -> int:
    from towerlite.machine import cpu_info
    from towerlite.serving.bench.builtin import Load
    from towerlite.serving.bench.inputs import RequestSet
    from towerlite.serving.bench.measured import summarize
    from towerlite.serving.bench.perf_analyzer import PerfAnalyzerEngine
    from towerlite.serving.triton import launch

    saved = json.loads(Path(args.texts).read_text())
    requests = RequestSet(saved["texts"], k=saved["k"])
    if requests.fingerprint != saved["fingerprint"]:
        raise SystemExit(f"{args.texts}: fingerprint {requests.fingerprint}, saved as "
                         f"{saved['fingerprint']}: the texts changed on the way")
    work = Path(tempfile.mkdtemp(prefix="gpu-serving-"))
    server = launch(args.repository, log_path=work / "triton.log", ready_timeout=300)
    result = {"repository": str(args.repository), "model": args.model, "machine": cpu_info(),
              "fingerprint": requests.fingerprint, "gpu_memory_loaded": gpu_memory_mib(),
              "server_rss_mb": round(server.rss_bytes() / 2**20), "levels": []}
    try:
        engine = PerfAnalyzerEngine("grpc", work, Path(args.perf_analyzer), log=print)
        for c in args.concurrency:
            cpu = server.cpu_seconds()
            m = engine.run_level(server.grpc_url, args.model, requests, c,
                                 Load(duration_s=args.duration), timeout=30)
            level = summarize(m)
            level["server_cpu_ms_per_request"] = round(
                (server.cpu_seconds() - cpu) * 1e3 / max(1, len(m.latencies_s)), 3)
            result["levels"].append(level)
            lat = level["latency_ms"] or {}
            print(f"c={c:<3} {level['throughput_rps']:8.1f} req/s  p50 {lat.get('p50')} ms  "
                  f"p99 {lat.get('p99')} ms  server CPU {level['server_cpu_ms_per_request']} "
                  f"ms/req  errors {level['errors']}", flush=True)
        result["gpu_memory_after"] = gpu_memory_mib()
    finally:
        server.stop()
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("texts", help="save the bench's request texts")
    t.add_argument("--out", required=True)
    t.add_argument("--count", type=int, default=1000)
    r = sub.add_parser("run", help="serve a repository and measure it")
    r.add_argument("--repository", type=Path, required=True)
    r.add_argument("--texts", required=True)
    r.add_argument("--perf-analyzer", required=True)
    r.add_argument("--model", default="recommend_fused")
    r.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8])
    r.add_argument("--duration", type=float, default=10)
    r.add_argument("--out", default="gpu_serving.json")
    args = p.parse_args(argv)
    return save_texts(args) if args.cmd == "texts" else run(args)


if __name__ == "__main__":
    sys.exit(main())
