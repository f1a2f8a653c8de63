"""What an idle gap between requests costs the history path's own work (docs/benchmarks.md):
a deployed `recommend_history_fused` model.py run in this process (a minimal stand-in for
`triton_python_backend_utils`; no server), one request at a time, sleeping GAP ms after each
— as a served model at concurrency 1 idles while the response travels and the next request
comes — and with `--halt-poll-ns` the same under the guest's halt polling at that value (a KVM
guest with the haltpoll cpuidle driver, as root; the setting is put back). Prints the
`execute` time a request, median and mean, for each gap and setting.

    .venv/bin/python scripts/idle_gap_bench.py runs/repo/portable --gaps 0,1,2 \
        --halt-poll-ns 2000000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import numpy as np

from towerlite.machine import cpu_idle, cpu_info, set_halt_poll
from towerlite.serving.repository.validate import parse_config

FUSED = "recommend_history_fused"


def stand_in() -> types.ModuleType:
    """triton_python_backend_utils as far as the history models use it."""
    pb = types.ModuleType("triton_python_backend_utils")

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self.error = output_tensors, error

    class TritonError(Exception):
        INVALID_ARG = 3

        def __init__(self, message, code=None):
            super().__init__(message)

    pb.Tensor, pb.InferenceResponse, pb.TritonError = Tensor, InferenceResponse, TritonError
    pb.get_input_tensor_by_name = lambda request, name: request.get(name)
    return pb


def fused_model(flavor: Path):
    """The flavor's recommend_history_fused, initialized as Triton would (its parameters)."""
    sys.modules["triton_python_backend_utils"] = stand_in()
    config = parse_config((flavor / FUSED / "config.pbtxt").read_text())
    params = {k: {"string_value": v.string_value} for k, v in config.parameters.items()}
    spec = importlib.util.spec_from_file_location("fused", flavor / FUSED / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps({"parameters": params}),
                      "model_repository": str(flavor / FUSED), "model_version": "1"})
    return model, sys.modules["triton_python_backend_utils"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("flavor", type=Path, help="a deployed portable flavor with " + FUSED)
    p.add_argument("--gaps", default="0,1,2", help="ms slept after each request")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--halt-poll-ns", type=int)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    model, pb = fused_model(args.flavor)
    ids = np.load(args.flavor / "history_encoder" / "1" / "history" / "item_ids.npy")
    about = json.loads((args.flavor / "history_encoder" / "1" / "history" / "history.json")
                       .read_text())
    start, stop = about["domains"][0]["start"], about["domains"][0]["stop"]
    rng = np.random.default_rng(0)
    requests = [{"HISTORY": pb.Tensor("HISTORY", np.array(
        [bytes(ids[j]) for j in rng.choice(np.arange(start, stop), rng.integers(1, 51),
                                           replace=False)], dtype=object))}
        for _ in range(500)]
    idle = cpu_idle()
    polls = [idle["halt_poll_ns"]] + ([args.halt_poll_ns] if args.halt_poll_ns is not None else [])
    rows = []
    try:
        for poll in polls:
            if args.halt_poll_ns is not None:
                set_halt_poll(poll)
            for gap in (float(g) for g in args.gaps.split(",")):
                times = []
                for i in range(args.requests):
                    t0 = time.perf_counter()
                    model.execute([requests[i % len(requests)]])
                    times.append((time.perf_counter() - t0) * 1e6)
                    if gap:
                        time.sleep(gap / 1e3)
                rows.append({"halt_poll_ns": poll, "gap_ms": gap,
                             "p50_us": float(np.median(times)), "mean_us": float(np.mean(times))})
                print(f"halt_poll_ns {poll}  gap {gap:g} ms: execute p50 {rows[-1]['p50_us']:.0f} "
                      f"µs, mean {rows[-1]['mean_us']:.0f} µs", flush=True)
    finally:
        if args.halt_poll_ns is not None:
            set_halt_poll(idle["halt_poll_ns"])
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows,
                                        "flavor": str(args.flavor),
                                        "machine": {**cpu_info(), **idle}}, indent=1))


if __name__ == "__main__":
    main()
