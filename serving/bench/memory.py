"""`towerlite bench memory`: serving measurements for docs/serving.md — the server's memory
with a deployed catalog, per-request `recommend` latency with the IVF index and with exact
search (the same repository hard-linked with the scorer's INDEX set to "exact"), and the
index's recall@10 against exact search on real MovieLens user texts (their liked movies, newest
10, history excluded).

    towerlite bench memory REPOSITORY [USERS] [OUT_JSON]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from towerlite.data import load_movielens, user_histories, user_text
from towerlite.machine import cpu_info
from towerlite.serving.client import Client
from towerlite.serving.triton import start_server

DESCRIPTION = (
    "The server's memory with a deployed catalog (RSS, PSS, time to ready), per-request "
    "`recommend` latency with the IVF index and with exact search (REPOSITORY hard-linked "
    "beside itself as REPOSITORY-exact, the scorer's INDEX set to exact, removed at the end), "
    "and the index's recall@10 against exact search on real MovieLens user texts. Prints the "
    "numbers as JSON; writes them to OUT_JSON when given.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", type=Path, help="a portable flavor folder with a catalog")
    p.add_argument("users", type=int, nargs="?", default=200,
                   help="MovieLens users (those with 3+ liked movies among the first USERS; "
                        "default 200)")
    p.add_argument("out", type=Path, nargs="?", metavar="OUT_JSON", help="also write the JSON here")


def command(args: argparse.Namespace) -> int:
    repo = args.repository
    n_users = args.users
    ml = load_movielens()
    by_id = {r["item_id"]: r for r in ml.items.to_dict("records")}
    hist = user_histories(ml.interactions, min_rating=ml.positive_threshold)
    users = [(u, h[-10:]) for u, h in list(hist.items())[:n_users] if len(h) >= 3]
    texts = [user_text([by_id[i] for i in h], max_items=10) for _, h in users]

    exact_repo = repo.parent / (repo.name + "-exact")
    shutil.rmtree(exact_repo, ignore_errors=True)
    subprocess.run(["cp", "-al", str(repo), str(exact_repo)], check=True)
    cfg = exact_repo / "scorer" / "config.pbtxt"
    text = cfg.read_text()
    cfg.unlink()
    cfg.write_text(text.replace('key: "INDEX" value: { string_value: "auto" }',
                                'key: "INDEX" value: { string_value: "exact" }'))

    results, out = {}, {}
    for name, path in (("ivf", repo), ("exact", exact_repo)):
        t0 = time.perf_counter()
        with start_server(path, log_path=Path(tempfile.mkdtemp()) / f"triton-{name}.log") as srv:
            ready_s = time.perf_counter() - t0
            with Client(srv.grpc_url) as c:
                for t in texts[:20]:
                    c.recommend(t, k=10)  # warm the page cache / code paths
                lat, got = [], []
                for (_, h), t in zip(users, texts):
                    s = time.perf_counter()
                    r = c.recommend(t, k=10, exclude=h)
                    lat.append((time.perf_counter() - s) * 1e3)
                    got.append(r.item_ids)
                lat_b, lat_m = [], []
                for t in texts[:100]:
                    for domain, bucket in (("book", lat_b), ("movie", lat_m)):
                        s = time.perf_counter()
                        c.recommend(t, k=10, domain=domain)
                        bucket.append((time.perf_counter() - s) * 1e3)
            results[name] = got
            out[name] = {"ready_s": round(ready_s, 1), "rss_mb": round(srv.rss_bytes() / 2**20),
                         "pss_mb": round(srv.pss_bytes() / 2**20),
                         "recommend_all_ms": {"p50": round(float(np.percentile(lat, 50)), 2),
                                              "p99": round(float(np.percentile(lat, 99)), 2),
                                              "mean": round(float(np.mean(lat)), 2)},
                         "recommend_books_p50_ms": round(float(np.percentile(lat_b, 50)), 2),
                         "recommend_movies_p50_ms": round(float(np.percentile(lat_m, 50)), 2),
                         "requests": len(lat)}
    hits = sum(len(set(a) & set(b)) for a, b in zip(results["ivf"], results["exact"]))
    out["ivf_recall_at_10_vs_exact_real_users"] = round(hits / (10 * len(texts)), 4)
    out["users"] = len(texts)
    meta = json.loads((repo / "scorer" / "1" / "catalog" / "catalog.json").read_text())
    out["catalog"] = {"count": meta["count"], "index": meta.get("index")}
    out["machine"] = cpu_info()  # the latencies depend on the CPU's vector flags
    print(json.dumps(out, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1))
    shutil.rmtree(exact_repo, ignore_errors=True)
    return 0
