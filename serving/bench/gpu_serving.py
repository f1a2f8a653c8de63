"""`towerlite bench gpu-serving run`: serve a deployed repository on the pip-installed Triton
and measure it with perf_analyzer over a saved request set — how the served GPU rows of
docs/benchmarks.md were taken (the portable flavor deployed with
`--spec encoder_device='"gpu"'`, onnxruntime-gpu in the Python the python backend runs), on a
machine that has no datasets.

    # here: the bench's request texts (held-out users of both datasets), saved
    towerlite bench gpu-serving texts --out .dev/serve/texts.json
    # there: the repository, this checkout installed, tritonclient's perf_analyzer unpacked
    towerlite bench gpu-serving run --repository R --texts .dev/serve/texts.json \\
        --perf-analyzer /tmp/tc/tritonclient/bin/perf_analyzer --out results.json

`run` starts the server with serving.triton.launch (every model in R), drives `--model` at
each concurrency with the perf_analyzer engine of `bench serving` for `--duration` seconds,
and writes the levels, the server's CPU seconds a request, its RSS and the GPU's memory in use.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from towerlite.machine import cpu_info, nvidia_smi

DESCRIPTION = (
    "Serve a deployed repository on the pip-installed Triton (every model in it) and drive "
    "--model at each concurrency with perf_analyzer over the texts `bench gpu-serving texts` "
    "saved, --duration seconds a level. Prints one line a level; writes --out (JSON): the "
    "levels, the server's CPU ms a request, its RSS and the GPU memory in use.")


def gpu_memory_mib() -> str | None:
    return nvidia_smi("memory.used") or None


def concurrency_list(text: str) -> list[int]:
    return [int(c) for c in text.split(",")]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, required=True, help="a deployed flavor folder")
    p.add_argument("--texts", required=True, help="the file `bench gpu-serving texts` wrote")
    p.add_argument("--perf-analyzer", required=True, help="the perf_analyzer binary")
    p.add_argument("--model", default="recommend_fused",
                   help="model to drive (default recommend_fused)")
    p.add_argument("--concurrency", type=concurrency_list, default=[1, 8],
                   help="levels, comma-separated (default 1,8)")
    p.add_argument("--duration", type=float, default=10, help="seconds a level (default 10)")
    p.add_argument("--out", default="gpu_serving.json", help="report (default gpu_serving.json)")


def command(args: argparse.Namespace) -> int:
    from towerlite.serving.triton import launch

    from .builtin import Load
    from .measured import summarize
    from .perf_analyzer import PerfAnalyzerEngine
    from .saved_texts import load

    requests = load(args.texts)
    work = Path(tempfile.mkdtemp(prefix="gpu-serving-"))
    server = launch(args.repository, log_path=work / "triton.log", ready_timeout=300)
    result = {"repository": str(args.repository), "model": args.model, "machine": cpu_info(),
              "fingerprint": requests.fingerprint, "gpu_memory_loaded": gpu_memory_mib(),
              "server_rss_mb": round(server.rss_bytes() / 2**20), "levels": []}
    try:
        engine = PerfAnalyzerEngine("grpc", work, Path(args.perf_analyzer))
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
