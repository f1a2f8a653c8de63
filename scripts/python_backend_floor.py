"""What a python-backend model costs before it computes anything (docs/benchmarks.md, history
path): a deployed `recommend_history_fused` against `history_floor`, a python model with the
same inputs, outputs and batching that answers every request with a fixed top-k and computes
nothing. Both in one server (the flavor folder hard-linked into a temporary repository, the
floor model added), measured by `towerlite bench serving` (perf_analyzer, held-out MovieLens
histories), alternated `--repeats` times. The floor's latency is what no model code inside the
python backend can go under on this machine: the request's crossing into the stub process and
back, gRPC and the load generator.

`--one-instance` adds two copies of the fused model with one instance, one batched as deployed
and one not batched.

`--halt-poll-ns N` (a KVM guest with the haltpoll cpuidle driver, as root) also alternates the
guest's halt polling: each repeat runs every model with the machine's own setting and with N,
and the setting is put back at the end. A vCPU that halts the moment it idles wakes slowly, and
at concurrency 1 every request follows an idle gap (docs/benchmarks.md).

    .venv/bin/python scripts/python_backend_floor.py runs/repo-h/portable --repeats 2 \
        --out docs/img/python-backend-floor-DATE.json
    .venv/bin/python scripts/python_backend_floor.py runs/repo-h/portable --halt-poll-ns 2000000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from towerlite.machine import cpu_idle, cpu_info, set_halt_poll
from towerlite.serving.bench.runner import BenchConfig, run
from towerlite.serving.triton import start_server

FUSED = "recommend_history_fused"
FLOOR = "history_floor"

# the floor model: reads its inputs as the fused model does (the tensors cross the same way),
# answers the first K of a fixed list
FLOOR_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

IDS = np.array([f"ml:{i}".encode() for i in range(1, 101)], dtype=object)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            pb_utils.get_input_tensor_by_name(request, "HISTORY").as_numpy()
            k_in = pb_utils.get_input_tensor_by_name(request, "K")
            k = int(k_in.as_numpy().reshape(-1)[0]) if k_in is not None else 10
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("ITEM_IDS", IDS[:k].reshape(1, -1)),
                pb_utils.Tensor("SCORES", np.linspace(1, 0, k, dtype=np.float32).reshape(1, -1)),
                pb_utils.Tensor("DOMAINS", np.array([[b"movie"] * k], dtype=object)),
                pb_utils.Tensor("SKIPPED", np.zeros((1, 0), dtype=object)),
                pb_utils.Tensor("RELEASE", np.array([[1]], dtype=np.int64))]))
        return responses
'''


DELAY = re.compile(r"max_queue_delay_microseconds: (\d+)")
OTHER_DELAY_US = 100  # the copies' delay when the deployed one is 0 (else 0)


def add_model(repo: Path, name: str, config: str, files: Path | None) -> None:
    """Model `name` in `repo` with `config` (renamed to it), version 1 hard-linked from
    `files` (a version folder), or the floor's model.py when `files` is None."""
    config = re.sub(r'^name: "[^"]*"', f'name: "{name}"', config, count=1, flags=re.M)
    (repo / name).mkdir()
    (repo / name / "config.pbtxt").write_text(config)
    if files is None:
        (repo / name / "1").mkdir()
        (repo / name / "1" / "model.py").write_text(FLOOR_MODEL)
    else:
        subprocess.run(["cp", "-al", str(files), str(repo / name / "1")], check=True)


def repository_with_floor(flavor: Path, where: Path) -> tuple[Path, str]:
    """`flavor` hard-linked into `where`/repo, plus the floor model (config: the fused model's,
    parameters dropped) and a copy of each with the other dynamic-batching delay (0, or
    OTHER_DELAY_US where the deploy's is 0; the fused copy serves the release's model.py as
    its version 1 and reads its steps at RELEASE, as the fused model does). Returns the
    repository and the copies' suffix."""
    repo = where / "repo"
    subprocess.run(["cp", "-al", str(flavor), str(repo)], check=True)
    config = (flavor / FUSED / "config.pbtxt").read_text()
    release = re.search(r'key: "RELEASE" value: \{ string_value: "(\d+)"', config).group(1)
    floor = re.sub(r"\nparameters[\s\S]*\Z", "\n", config)  # the fused model's own settings
    add_model(repo, FLOOR, floor, None)
    other = OTHER_DELAY_US if int(DELAY.search(config).group(1)) == 0 else 0
    for name, text, files in ((FUSED, config, flavor / FUSED / release), (FLOOR, floor, None)):
        text = DELAY.sub(f"max_queue_delay_microseconds: {other}", text)
        add_model(repo, f"{name}_delay{other}", text, files)
    return repo, f"_delay{other}"


ONE_INSTANCE = "_one"            # one instance, the deploy's batching and queue policy
ONE_UNBATCHED = "_one_unbatched"  # one instance, no dynamic batching


def add_one_instance_copies(repo: Path, flavor: Path) -> tuple[str, ...]:
    """Copies of the fused model with one instance, batched as deployed and not batched: the
    first stalled 0.5 s on ~1% of requests (the queue policy), the second was the fastest at
    c=1 (docs/benchmarks.md). Returns their names."""
    config = (flavor / FUSED / "config.pbtxt").read_text()
    release = re.search(r'key: "RELEASE" value: \{ string_value: "(\d+)"', config).group(1)
    one = re.sub(r"count: \d+, kind: KIND_CPU", "count: 1, kind: KIND_CPU", config)
    unbatched = re.sub(r"\ndynamic_batching \{[\s\S]*?\n\}\n", "\n", one)
    for suffix, text in ((ONE_INSTANCE, one), (ONE_UNBATCHED, unbatched)):
        add_model(repo, FUSED + suffix, text, flavor / FUSED / release)
    return FUSED + ONE_INSTANCE, FUSED + ONE_UNBATCHED


def level_row(level: dict) -> dict:
    lat, server = level["latency_ms"], level.get("server", {})
    return {"concurrency": level["concurrency"], "p50_ms": lat["p50"], "p99_ms": lat["p99"],
            "throughput_rps": level["throughput_rps"], "errors": level["errors"],
            "server": server}


def alternated(url: str, models, repeats: int, concurrency: tuple[int, ...], duration: float,
               where: Path, polls: tuple[int | None, ...] = (None,)) -> dict[str, list]:
    """`towerlite bench serving` (500 held-out MovieLens histories) of each model in turn,
    `repeats` times, under each halt-polling setting in `polls` (None: leave it): {model, or
    "model @halt_poll_ns=N": [each run's rows by concurrency]}, printed as they come."""
    runs: dict[str, list] = {}
    for repeat in range(repeats):
        for poll in polls:
            if poll is not None:
                set_halt_poll(poll)
            for model in models:
                name = model if poll is None else f"{model} @halt_poll_ns={poll}"
                report = run(BenchConfig(url=url, out=where / f"{model}-{poll}-{repeat}",
                                         model=model, concurrency=concurrency,
                                         duration_s=duration, texts=500, datasets="movielens"))
                rows = [level_row(lv) for lv in report["levels"]]
                runs.setdefault(name, []).append(rows)
                print(f"run {repeat + 1} {name}: " + "; ".join(
                    f"c={r['concurrency']} p50/p99 {r['p50_ms']:.2f}/{r['p99_ms']:.2f} ms, "
                    f"{r['throughput_rps']:.0f} req/s" for r in rows), flush=True)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("flavor", type=Path,
                   help="a portable flavor folder with recommend_history_fused")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--halt-poll-ns", type=int,
                   help="also run every model with the guest's halt polling at this many ns")
    p.add_argument("--one-instance", action="store_true",
                   help="also copies of the fused model with one instance, batched and not")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not (args.flavor / FUSED / "config.pbtxt").is_file():
        raise SystemExit(f"{args.flavor} has no {FUSED}: deploy with --history-model")
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    idle = cpu_idle()
    polls: tuple[int | None, ...] = (None,)
    if args.halt_poll_ns is not None:
        if idle["halt_poll_ns"] is None:
            raise SystemExit("--halt-poll-ns: this machine has no haltpoll cpuidle driver "
                             f"(cpuidle driver: {idle['cpuidle_driver']})")
        polls = (idle["halt_poll_ns"], args.halt_poll_ns)
    where = Path(tempfile.mkdtemp(prefix="floor-"))
    try:
        repo, other = repository_with_floor(args.flavor, where)
        models = (FUSED, FUSED + other, FLOOR, FLOOR + other)
        if args.one_instance:
            models += add_one_instance_copies(repo, args.flavor)
        with start_server(repo, log_path=where / "triton.log") as srv:
            runs = alternated(srv.grpc_url, models, args.repeats, concurrency, args.duration,
                              where, polls)
    finally:
        if idle["halt_poll_ns"] is not None and polls != (None,):
            set_halt_poll(idle["halt_poll_ns"])
        shutil.rmtree(where, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": runs,
                                        "flavor": str(args.flavor),
                                        "machine": {**cpu_info(), **idle}},
                                       indent=1))


if __name__ == "__main__":
    main()
