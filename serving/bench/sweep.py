"""`towerlite bench sweep`: serving settings on one deployed repository, one server at a time.

For each variant (RepositorySpec overrides, e.g. user_encoder_threads=2), rewrite the portable
flavor's configs and model.py files in place (weights and catalog stay), start the server, run
`towerlite bench serving` one concurrency level at a time, and read the server's CPU time
(tritonserver and its python-backend stubs, from /proc) around each level. Prints one table and
writes OUT/sweep.json; each level's full bench report is in OUT/<variant>/c<N>/.

    towerlite bench sweep --repository runs/deploy/portable --out runs/sweep \\
        --variant 'baseline:buckets=[16,32,64,128]' --variant 'default:' \\
        --variant 'one-instance:user_encoder_instances=1,user_encoder_threads=2' \\
        --variant 'fused:model="recommend_fused"'

A variant is NAME:FIELD=JSON,FIELD=JSON… (empty after the colon: the current defaults).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from towerlite.machine import cpu_info
from towerlite.serving.cli import spec_settings
from towerlite.serving.repository import (
    MODEL_CODE,
    RepositorySpec,
    parse_config,
    write_code,
)
from towerlite.serving.triton import launch

from .inputs import build_requests
from .plot import plot
from .report import write
from .runner import BenchConfig, run

DESCRIPTION = (
    "Benchmark serving settings on one deployed repository, one server at a time: for each "
    "--variant NAME:FIELD=JSON,… (RepositorySpec overrides, checked as `deploy --spec`; the "
    "pseudo-field model picks the model driven; empty after the colon: the current defaults) "
    "rewrite the portable flavor's configs and model.py files in place, start the server, run "
    "`towerlite bench serving` one concurrency level at a time and read the server's CPU time "
    "around each level. Prints one table; writes OUT/sweep.json (merged with earlier sweeps "
    "there), OUT/sweep.png and each level's bench report in OUT/<variant>/c<N>/; the "
    "repository's deployed settings are written back at the end.")


def parse_variant(text: str) -> tuple[str, str, dict]:
    """NAME:FIELD=JSON,… → (name, model, RepositorySpec overrides, checked as `deploy --spec`);
    the pseudo-field `model` picks the model the bench drives (default recommend)."""
    name, _, rest = text.partition(":")
    items = [part for part in _split(rest) if part]
    models = [json.loads(p.partition("=")[2]) for p in items if p.startswith("model=")]
    overrides = spec_settings([p for p in items if not p.startswith("model=")])
    return name, (models or ["recommend"])[-1], overrides


def _split(text: str) -> list[str]:
    """Split on commas outside brackets."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


class _Shim:
    """Just enough of triton_python_backend_utils to call the repository's model.py files in
    this process: the same code and files as the server, without Triton."""

    class Tensor:
        def __init__(self, name, array):
            self.name, self.array = name, array

        def as_numpy(self):
            return self.array

    class TritonError(Exception):
        pass

    class InferenceResponse:
        def __init__(self, output_tensors, error=None):
            self.outputs = {t.name: t.array for t in output_tensors}
            self.error = error

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return request.get(name)


def in_process(repository: Path, texts: list[str], k: int = 10, rounds: int = 2) -> dict:
    """Latency of tokenizer → user_encoder → scorer called one after another in this process
    (concurrency 1): the pipeline the server runs, minus Triton."""
    import importlib.util
    import time

    import numpy as np
    from google.protobuf import json_format

    sys.modules["triton_python_backend_utils"] = _Shim
    # the fused model's own loader: each model.py initialized with its config, as Triton does
    spec = importlib.util.spec_from_file_location("inproc_fused", MODEL_CODE / "fused.py")
    fused = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fused)
    models = {}
    for name in ("tokenizer", "user_encoder", "scorer"):
        config = parse_config((repository / name / "config.pbtxt").read_text())
        config = json_format.MessageToDict(config, preserving_proto_field_name=True)
        models[name], _ = fused._load(str(repository), name, config)

    def one(text):
        marks = [time.perf_counter()]
        request = {"TEXT": _Shim.Tensor("TEXT", np.array([[text.encode()]], dtype=object))}
        tok = models["tokenizer"].execute([request])[0]
        ids, mask = tok.outputs["input_ids"], tok.outputs["attention_mask"]
        marks.append(time.perf_counter())
        emb = models["user_encoder"].execute([{"input_ids": _Shim.Tensor("", ids),
                                               "attention_mask": _Shim.Tensor("", mask)}])[0]
        marks.append(time.perf_counter())
        models["scorer"].execute([{
            "EMBEDDING": _Shim.Tensor("", emb.outputs["sentence_embedding"]),
            "K": _Shim.Tensor("", np.array([[k]], dtype=np.int32))}])
        marks.append(time.perf_counter())
        return np.diff(marks) * 1e3

    steps = []
    for r in range(rounds):
        for text in texts:
            if r:
                steps.append(one(text))
            else:
                one(text)
    steps = np.array(steps)
    lat = steps.sum(axis=1)
    out = {"requests": len(lat), "p50": round(float(np.percentile(lat, 50)), 2),
           "p99": round(float(np.percentile(lat, 99)), 2), "mean": round(float(np.mean(lat)), 2)}
    for i, name in enumerate(("tokenizer", "user_encoder", "scorer")):
        out[f"{name}_mean"] = round(float(steps[:, i].mean()), 3)
    return out


def measure_level(server, name: str, model: str, c: int, args) -> dict:
    """One concurrency level with `towerlite bench serving`; the server's CPU time read around
    it."""
    quiet = logging.getLogger(run.__module__)  # the sweep prints one line a level itself
    was = quiet.level
    quiet.setLevel(logging.WARNING)
    before = server.cpu_seconds()
    try:
        bench = run(BenchConfig(url=server.grpc_url, out=args.out / name / f"c{c}", model=model,
                                concurrency=(c,), duration_s=args.duration, engine=args.engine,
                                texts=args.texts, label=name))
    finally:
        quiet.setLevel(was)
    cpu = server.cpu_seconds() - before  # the warm-up's 50 requests included
    write(bench, args.out / name / f"c{c}")
    level = bench["levels"][-1]
    lat = level["latency_ms"] or {}
    return {"variant": name, "model": model, "concurrency": c,
            "rps": level["throughput_rps"], "p50": lat.get("p50"), "p99": lat.get("p99"),
            "errors": level["errors"],
            "server_cpu_ms_per_req": round(cpu / max(1, level["requests"] + 50) * 1e3, 2),
            "server": {m: {k: v for k, v in s.items() if k.endswith("_us")}
                       for m, s in level["server"].items()},
            "rss_mb": round(server.rss_bytes() / 2**20),
            "pss_mb": round(server.pss_bytes() / 2**20)}


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--repository", type=Path, required=True, help="a portable flavor folder")
    ap.add_argument("--out", type=Path, required=True,
                    help="folder for sweep.json, sweep.png and each level's report")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME:FIELD=JSON,…",
                    help="one setting to measure (repeatable), e.g. "
                         "'one-instance:user_encoder_instances=1,user_encoder_threads=2'")
    ap.add_argument("--concurrency", default="1,2,4,8,16",
                    help="levels, comma-separated (default 1,2,4,8,16)")
    ap.add_argument("--duration", type=float, default=10.0,
                    help="seconds per level (default 10)")
    ap.add_argument("--engine", default="perf_analyzer",
                    help="`bench serving`'s --engine (default perf_analyzer)")
    ap.add_argument("--texts", type=int, default=1000, help="request texts (default 1000)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure the whole list of variants this many times, in turn (this "
                         "machine's run-to-run noise is ±15%%)")
    ap.add_argument("--in-process", action="store_true",
                    help="also time the same three model.py files called in this process (c=1)")


def command(args: argparse.Namespace) -> int:
    report = json.loads((args.repository.parent / "deploy_report.json").read_text())
    base = RepositorySpec.from_json(report["spec"])
    domains = {d["name"] for d in json.loads(
        (args.repository / "scorer" / "1" / "catalog" / "catalog.json").read_text())["domains"]}
    texts = build_requests([d for d, dom in (("movielens", "movie"), ("bookcrossing", "book"))
                            if dom in domains], args.texts).texts
    rows, local = [], {}
    runs = [(text, r) for r in range(args.repeat) for text in args.variant]
    for text, round_ in runs:
        name, model, overrides = parse_variant(text)
        if args.repeat > 1:
            name = f"{name}#{round_ + 1}"
        spec = replace(base, **overrides)
        write_code(args.repository, spec, "portable")
        if args.in_process:
            local[name] = in_process(args.repository, texts)
            print(f"{name:24s} in-process c=1: p50 {local[name]['p50']:.2f} p99 "
                  f"{local[name]['p99']:.2f} ms", flush=True)
        server = launch(args.repository, log_path=args.out / name / "triton.log")
        try:
            for c in map(int, args.concurrency.split(",")):
                row = measure_level(server, name, model, c, args)
                rows.append({**row, "overrides": overrides})
                print(f"{name:24s} c={c:<3d} {row['rps']:8.1f} req/s  p50 {row['p50']:7.2f}  "
                      f"p99 {row['p99']:7.2f} ms  server CPU {row['server_cpu_ms_per_req']:.2f} "
                      f"ms/req  errors {row['errors']}", flush=True)
        finally:
            server.stop()
    write_code(args.repository, base, "portable")  # leave the deployed settings in place
    args.out.mkdir(parents=True, exist_ok=True)
    # merge with earlier sweeps into the same folder: a variant measured again replaces its rows
    path = args.out / "sweep.json"
    old = json.loads(path.read_text()) if path.is_file() else {"rows": [], "in_process": {}}
    names = {r["variant"] for r in rows}
    rows = [r for r in old["rows"] if r["variant"] not in names] + rows
    local = {**old.get("in_process", {}), **local}
    tmp = args.out / ".sweep.json.tmp"
    # the machine of this sweep (each level's bench.json has its own record too)
    tmp.write_text(json.dumps({"repository": str(args.repository), "machine": cpu_info(),
                               "rows": rows, "in_process": local}, indent=1))
    tmp.replace(args.out / "sweep.json")
    series = {}
    for r in rows:  # each level's own report, for the latency-vs-throughput plot
        level = json.loads((args.out / r["variant"] / f"c{r['concurrency']}" / "bench.json")
                           .read_text())["levels"][-1]
        series.setdefault(r["variant"], []).append(level)
    png = plot(list(series.items()), args.out / "sweep.png", "serving settings")
    print(f"wrote {path} and {png}")
    return 0
