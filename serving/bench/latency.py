"""`towerlite bench serving`: latency and throughput of a running server under real requests
(probe, request texts, engine, warm-up and levels are runner.py's; the report is report.py's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from towerlite.errors import TowerliteError

DESCRIPTION = (
    "Drive a running Triton server (towerlite serve) with real user texts of held-out "
    "MovieLens users (and Book-Crossing users when the served catalog has books), varied "
    "lengths, seeded; after a warm-up, per concurrency level: throughput, client-side latency "
    "p50/p90/p95/p99/max, errors, and the server-side queue/compute split of every composing "
    "model from Triton's statistics. Engines: perf_analyzer (from tritonclient 2.51's wheel; "
    "fed an --input-data file of the same texts) or a built-in asyncio generator; auto picks "
    "perf_analyzer when it runs here. Writes OUT/bench.json, bench.csv and bench.png, prints a "
    "table; exits 1 when any request failed (they are counted in the report). "
    "`towerlite bench compare A.json B.json …` puts reports side by side.")


def concurrency_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated positive integers, "
                                         "e.g. 1,2,4,8,16")
    return tuple(dict.fromkeys(values))


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .runner import DATASET_CHOICES, ENGINES

    p.add_argument("--url", help="the server's HOST:PORT (gRPC port, or HTTP with --protocol "
                                 "http), as `towerlite serve` prints it")
    p.add_argument("--model", default="recommend", help="model to drive (default recommend)")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--concurrency", type=concurrency_list, default=(1, 2, 4, 8, 16),
                   help="concurrency levels, comma-separated (default 1,2,4,8,16)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--duration", type=float, metavar="S",
                        help="seconds measured per level (default 10)")
    length.add_argument("--requests", type=int, metavar="N", help="requests measured per level")
    p.add_argument("--engine", default="auto", choices=ENGINES,
                   help="load generator (default auto: perf_analyzer where it runs, else builtin)")
    p.add_argument("--perf-analyzer", type=Path, metavar="PATH",
                   help="perf_analyzer binary (default: PATH, this environment's bin/, "
                        "$TOWERLITE_HOME/perf_analyzer, else extracted from tritonclient's wheel)")
    p.add_argument("--texts", type=int, default=1000,
                   help="distinct request texts, one held-out user each (default 1000)")
    p.add_argument("--datasets", default="auto", choices=DATASET_CHOICES,
                   help="where the users come from (default auto: the served catalog's domains)")
    p.add_argument("--max-history", type=int, default=10,
                   help="a text holds 1…N of the user's latest liked items (default 10)")
    p.add_argument("--history-ids", type=int, default=50,
                   help="a model with a HISTORY input (recommend_history): each request sends the "
                        "newest 1…N liked item ids of a held-out user (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=10, help="results per request (default 10)")
    p.add_argument("--domain", help="domain filter on every request (movie, book)")
    p.add_argument("--warmup", type=int, default=50,
                   help="requests sent before measuring (default 50)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may take before it counts as failed (builtin engine; "
                        "default 30)")
    p.add_argument("--label", help="name of this run in tables and compare (default MODEL@URL)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"),
                   help="report folder (default runs/bench)")


def command(args: argparse.Namespace) -> int:
    from .report import table, write
    from .runner import BenchConfig, run

    if not args.url:
        raise TowerliteError("--url HOST:PORT is required (or `towerlite bench compare A.json "
                             "B.json`)")
    cfg = BenchConfig(url=args.url, out=args.out, model=args.model, protocol=args.protocol,
                      concurrency=args.concurrency,
                      duration_s=None if args.requests is not None else
                      (10.0 if args.duration is None else args.duration),
                      requests=args.requests, engine=args.engine, texts=args.texts,
                      datasets=args.datasets, seed=args.seed, k=args.k, domain=args.domain,
                      max_history=args.max_history, history_ids=args.history_ids,
                      warmup=args.warmup, timeout_s=args.timeout,
                      perf_analyzer=args.perf_analyzer, label=args.label)
    report = run(cfg)
    paths = write(report, args.out)
    print(table(report))
    print(f"\nreport: {paths['json']}  ({paths['csv'].name}, {paths['png'].name})")
    failed = sum(lv["errors"] for lv in report["levels"])
    if failed:
        total = failed + sum(lv["requests"] for lv in report["levels"])
        first = next(lv for lv in report["levels"] if lv["errors"])
        raise TowerliteError(f"{failed:,} of {total:,} requests failed (first, at concurrency "
                             f"{first['concurrency']}: {first['first_error']}); they are "
                             f"counted in {paths['json']}")
    return 0

