"""The history path over a large catalog, exact search against the IVF index deploy builds for
the history scorer (docs/benchmarks.md): one server serves a deployed `recommend_history_fused`
(its history scorer searching catalog/index.faiss) and a copy of it with INDEX "exact" (the
same files, the whole table scanned). For each, held-out MovieLens users' histories are sent
as ids and the top 10 compared with the in-process exact ranking over the deployed table
(same list, overlap, Recall@10 of the user's held-out next like), with DOMAIN "movie" and with
no domain filter; before the server, the index's recall at each `--nprobes` value
in-process, queried with the same users' vectors and with deploy's check queries (the
training histories saved with the tower; for a tower saved before them, also the ones a run
saves now, drawn from the eval's training users); then `towerlite bench serving`
(perf_analyzer) measures both, alternated `--repeats` times.

    towerlite deploy --user-model runs/export/start --variant int8_dynamic --item-variant fp32 \
        --catalog both --flavor portable --history-model runs/h-ml1/model --out runs/repo-both
    .venv/bin/python scripts/history_index_bench.py runs/repo-both/portable --out runs/hidx.json
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

import numpy as np
from python_backend_floor import FUSED, add_model, alternated

from towerlite.evaluation.cases import build_cases
from towerlite.machine import cpu_info
from towerlite.sequential import SavedTower, onnx_user_vectors, probe_histories
from towerlite.serving import index as ix
from towerlite.serving.client import Client
from towerlite.serving.deploy import check_users
from towerlite.serving.triton import start_server

EXACT = FUSED + "_exact"


def repository_with_exact(flavor: Path, where: Path) -> Path:
    """`flavor` hard-linked into `where`/repo, plus EXACT: the fused model's config with INDEX
    "exact", serving the same release files."""
    repo = where / "repo"
    subprocess.run(["cp", "-al", str(flavor), str(repo)], check=True)
    config = (flavor / FUSED / "config.pbtxt").read_text()
    release = re.search(r'key: "RELEASE" value: \{ string_value: "(\d+)"', config).group(1)
    exact, n = re.subn(r'(key: "INDEX" value: \{ string_value: )"[a-z]+"', r'\1"exact"', config)
    if n != 1:
        raise SystemExit(f"{flavor / FUSED / 'config.pbtxt'} has no INDEX parameter")
    add_model(repo, EXACT, exact, flavor / FUSED / release)
    return repo


def held_out_users(flavor: Path, users: int) -> dict:
    """The newest release's history table (ids, scorer catalog.json, index file), held-out
    MovieLens users over it (their history rows, target rows and user vectors) and the query
    sets the sweep measures the index with."""
    root = flavor / "history_encoder"
    version = str(max(int(p.name) for p in root.iterdir() if p.name.isdigit()))
    folder = root / version / "history"
    catalog = flavor / "history_scorer" / version / "catalog"
    table = np.load(folder / "item_table.npy")
    ids = [i.decode() for i in np.load(folder / "item_ids.npy")]
    row_of = {item: r for r, item in enumerate(ids)}
    cases = build_cases("movielens", users=users, max_history=10)
    tower = SavedTower.load(folder)
    seen = [[row_of[cases.item_ids[r]] for r in s] for s in cases.seen]
    vectors = onnx_user_vectors(tower.session(), table, seen, tower.config.max_len)
    about, check = check_users(tower, table, ids)
    queries = {"held-out users": vectors, f"deploy's check: {about}": check}
    if not tower.probes():  # saved before towers carried them: those a run saves now
        probes = probe_histories(cases.train_sequences, cases.item_ids, tower.config.max_len)
        queries["200 training histories, as a run now saves them"] = onnx_user_vectors(
            tower.session(), table, [[row_of[i] for i in p] for p in probes],
            tower.config.max_len)
    return {"table": table, "ids": ids, "index_file": catalog / "index.faiss",
            "meta": json.loads((catalog / "catalog.json").read_text()), "seen": seen,
            "targets": [row_of[cases.item_ids[t]] for t in cases.targets],
            "vectors": vectors, "queries": queries}


def nprobe_sweep(held: dict, nprobes: list[int]) -> list[dict]:
    """In-process: the history scorer's index (re-scored as the scorer does) against exact
    search at each nprobe, each query set in turn."""
    index = ix.read_index(held["index_file"])
    out = []
    for queries, vectors in held["queries"].items():
        reference = ix.ExactReference.of(held["table"], vectors, 10)
        for nprobe in nprobes:
            out.append({"queries": queries, **ix.recall_at_k(
                index, held["table"], vectors, k=10, nprobe=nprobe,
                rescore=held["meta"]["index"]["rescore"], reference=reference)})
            print(f"{queries}, nprobe {nprobe}: recall@10 {out[-1]['recall']}, "
                  f"{out[-1]['ivf_ms_per_query']} ms a query (exact "
                  f"{out[-1]['exact_ms_per_query']} ms)", flush=True)
    return out


def ranking(held: dict, url: str) -> dict:
    """Each model's top 10 against the exact in-process ranking of the deployed table."""
    table, ids, meta = held["table"], held["ids"], held["meta"]
    movies = next((d["start"], d["stop"]) for d in meta["domains"] if d["name"] == "movie")
    out = {}
    with Client(url) as client:
        for domain in ("movie", None):
            wanted = []  # the exact top 10 of each user, computed once for both models
            for vector, rows in zip(held["vectors"], held["seen"]):
                scores = table @ vector
                scores[rows] = -np.inf
                if domain:
                    scores[:movies[0]], scores[movies[1]:] = -np.inf, -np.inf
                wanted.append([ids[r] for r in np.argsort(-scores, kind="stable")[:10]])
            for model in (FUSED, EXACT):
                same, overlap, hit = [], [], []
                for want, rows, target in zip(wanted, held["seen"], held["targets"]):
                    got = client.recommend_history([ids[r] for r in rows], k=10, domain=domain,
                                                   model=model).item_ids
                    same.append(got == want)
                    overlap.append(len(set(got) & set(want)) / 10)
                    hit.append(ids[target] in got)
                out[f"{model} domain={domain or 'all'}"] = {
                    "users": len(same), "same_top10_share": round(float(np.mean(same)), 4),
                    "top10_overlap": round(float(np.mean(overlap)), 4),
                    "recall@10": round(float(np.mean(hit)), 4)}
                print(f"{model:34s} domain={domain or 'all':5s} " + ", ".join(
                    f"{k} {v}" for k, v in out[f"{model} domain={domain or 'all'}"].items()),
                    flush=True)
    out["history_index"] = meta.get("index")
    out["count"] = meta["count"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("flavor", type=Path,
                   help="a portable flavor folder deployed with --history-model over a large "
                        "catalog (its history scorer with an index)")
    p.add_argument("--users", type=int, default=300, help="held-out MovieLens users compared")
    p.add_argument("--concurrency", default="1,8")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nprobes", default="32,64,128,256",
                   help="nprobe values the in-process sweep measures ('' none)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if not (args.flavor / FUSED / "config.pbtxt").is_file():
        raise SystemExit(f"{args.flavor} has no {FUSED}: deploy with --history-model")
    concurrency = tuple(int(c) for c in args.concurrency.split(","))
    held = held_out_users(args.flavor, args.users)
    sweep = nprobe_sweep(held, [int(n) for n in args.nprobes.split(",") if n.strip()])
    where = Path(tempfile.mkdtemp(prefix="history-index-"))
    try:
        repo = repository_with_exact(args.flavor, where)
        with start_server(repo, log_path=where / "triton.log") as srv:
            agreement = ranking(held, srv.grpc_url)
            runs = alternated(srv.grpc_url, (FUSED, EXACT), args.repeats, concurrency,
                              args.duration, where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "ranking": agreement,
                                        "nprobe_sweep": sweep,
                                        "runs": runs, "flavor": str(args.flavor),
                                        "machine": cpu_info()}, indent=1))


if __name__ == "__main__":
    main()
