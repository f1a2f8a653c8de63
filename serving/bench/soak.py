"""`towerlite bench soak`: a fresh server on REPOSITORY under steady load for a long while, to see
what short benchmarks cannot: failed requests, memory that keeps growing, latency that drifts.

The load is the built-in closed-loop generator at one concurrency, run in back-to-back windows
(default 60 s; between two windows the clients reconnect, a gap of milliseconds) over the same
held-out users' texts (or liked-id lists) `bench serving` sends. A thread samples the server's
RSS and PSS (Triton and its python stubs) every --sample seconds. The first window is warm-up:
memory growth is the last window's mean RSS against the RSS at the end of the first.

    towerlite bench soak REPOSITORY --concurrency 16 --minutes 10 --out runs/soak
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import ensure_writable_dir, write_json_atomic
from towerlite.machine import cpu_info, load_average

from .builtin import Load, run_level
from .inputs import build_requests
from .measured import summarize
from .probe import probe
from .runner import choose_datasets

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Start a Triton server on REPOSITORY, drive MODEL at one concurrency for --minutes in "
    "back-to-back windows of --window seconds (the built-in generator, real held-out users' "
    "requests), and sample the server's RSS/PSS every --sample seconds. Writes OUT/soak.json "
    "(per-window throughput, errors, latency percentiles; memory samples; growth after the "
    "first window) and OUT/soak.png (percentiles per window, memory over time). Exits 1 when "
    "any request failed or memory grew by --max-growth percent or more.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", type=Path, help="a deployed flavor folder (e.g. OUT/portable)")
    p.add_argument("--model", default="recommend", help="model to drive (default recommend)")
    p.add_argument("--concurrency", type=int, default=16, help="clients in flight (default 16)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    p.add_argument("--window", type=float, default=60.0,
                   help="seconds per measured window, the plot's x step (default 60)")
    p.add_argument("--sample", type=float, default=10.0,
                   help="seconds between memory samples (default 10)")
    p.add_argument("--texts", type=int, default=1000,
                   help="distinct requests, one held-out user each (default 1000)")
    p.add_argument("--max-growth", type=float, default=10.0,
                   help="memory growth after the first window, in percent, that fails the "
                        "soak (default 10)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds a request may take before it counts as failed (default 30)")
    p.add_argument("--out", type=Path, default=Path("runs/soak"),
                   help="report folder (default runs/soak)")


class MemorySampler(threading.Thread):
    """(seconds since start, RSS MB, PSS MB) of the server every `every` seconds until stopped."""

    def __init__(self, server, every: float):
        super().__init__(daemon=True)
        self.server, self.every = server, every
        self.samples: list[dict] = []
        self.began = time.monotonic()
        self._halt = threading.Event()

    def sample(self) -> None:
        self.samples.append({"t_s": round(time.monotonic() - self.began, 1),
                             "rss_mb": round(self.server.rss_bytes() / 2**20, 1),
                             "pss_mb": round(self.server.pss_bytes() / 2**20, 1)})

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def memory_growth(samples: list[dict], warm_until_s: float, last_from_s: float) -> dict:
    """RSS at the end of warm-up against the mean of the last window's samples."""
    warm = [s for s in samples if s["t_s"] <= warm_until_s] or samples[:1]
    last = [s for s in samples if s["t_s"] >= last_from_s] or samples[-1:]
    base = warm[-1]["rss_mb"]
    final = sum(s["rss_mb"] for s in last) / len(last)
    return {"rss_after_warmup_mb": base, "rss_last_window_mean_mb": round(final, 1),
            "rss_max_mb": max(s["rss_mb"] for s in samples),
            "pss_max_mb": max(s["pss_mb"] for s in samples),
            "growth_pct": round(100 * (final - base) / base, 2) if base else None}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    windows = [w for w in report["windows"] if w["latency_ms"]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    minutes = [w["ends_s"] / 60 for w in windows]
    for p in ("p50", "p90", "p99"):
        top.plot(minutes, [w["latency_ms"][p] for w in windows], marker="o", label=p)
    top.set_ylabel("latency per window (ms)")
    top.legend()
    top.grid(alpha=0.3)
    samples = report["memory"]["samples"]
    t = [s["t_s"] / 60 for s in samples]
    bottom.plot(t, [s["rss_mb"] for s in samples], label="RSS")
    bottom.plot(t, [s["pss_mb"] for s in samples], label="PSS")
    bottom.set_xlabel("minutes since the load started")
    bottom.set_ylabel("server memory (MB)")
    bottom.legend()
    bottom.grid(alpha=0.3)
    fig.suptitle(f"{report['model']} at concurrency {report['concurrency']}: "
                 f"{report['requests']:,} requests, {report['errors']} failed")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _check(args: argparse.Namespace) -> None:
    if args.concurrency < 1 or args.texts < 1:
        raise TowerliteError("--concurrency and --texts must be at least 1")
    if args.window <= 0 or args.sample <= 0 or args.minutes <= 0 or args.timeout <= 0:
        raise TowerliteError("--minutes, --window, --sample and --timeout must be positive")
    if args.minutes * 60 < 2 * args.window:
        raise TowerliteError("--minutes must hold at least two windows (the first is warm-up)")
    if not args.repository.is_dir():
        raise TowerliteError(f"{args.repository}: no such repository folder")


def command(args: argparse.Namespace) -> int:
    from towerlite.serving.triton import start_server

    _check(args)
    out = ensure_writable_dir(args.out, "soak output folder")
    started = datetime.now(timezone.utc)
    windows_n = max(2, round(args.minutes * 60 / args.window))
    with start_server(args.repository, log_path=out / "triton.log") as server:
        info = probe(server.grpc_url, "grpc", args.model)
        kind = "history" if "HISTORY" in info.inputs else "text"
        requests = build_requests(choose_datasets("auto", info, None), args.texts, 0, 10, None,
                                  10 if kind == "text" else 50, kind)
        log.info(f"soak: {args.model} on {server.grpc_url}, concurrency {args.concurrency}, "
                 f"{windows_n} windows of {args.window:g} s, {len(requests.texts):,} requests")
        load_before = load_average()
        sampler = MemorySampler(server, args.sample)
        sampler.sample()
        sampler.start()
        windows = []
        try:
            for number in range(windows_n):
                measured = run_level(server.grpc_url, "grpc", args.model, requests,
                                     args.concurrency, Load(duration_s=args.window),
                                     args.timeout)
                window = summarize(measured)
                window["ends_s"] = round(time.monotonic() - sampler.began, 1)
                windows.append(window)
                lat = window["latency_ms"] or {}
                log.info(f"  window {number + 1}/{windows_n}: {window['requests']:,} ok, "
                         f"{window['errors']} failed, {window['throughput_rps']:.1f} req/s, "
                         f"p50 {lat.get('p50', float('nan')):.1f} ms, "
                         f"p99 {lat.get('p99', float('nan')):.1f} ms, "
                         f"RSS {sampler.samples[-1]['rss_mb']:,.0f} MB")
        finally:
            sampler.stop()
    growth = memory_growth(sampler.samples, windows[0]["ends_s"], windows[-2]["ends_s"])
    report = {
        "created": started.isoformat(timespec="seconds"), "repository": str(args.repository),
        "model": args.model, "concurrency": args.concurrency, "window_s": args.window,
        "minutes": round(windows[-1]["ends_s"] / 60, 2), "inputs": requests.describe(),
        "requests": sum(w["requests"] for w in windows),
        "errors": sum(w["errors"] for w in windows),
        "first_error": next((w["first_error"] for w in windows if w["first_error"]), None),
        "windows": windows, "memory": {**growth, "samples": sampler.samples},
        "machine": {**cpu_info(), "load_average_before": load_before,
                    "load_average_after": load_average()}}
    write_json_atomic(out / "soak.json", report)
    plot(report, out / "soak.png")
    print(f"{report['requests']:,} requests, {report['errors']} failed; RSS after warm-up "
          f"{growth['rss_after_warmup_mb']:,.0f} MB, last window "
          f"{growth['rss_last_window_mean_mb']:,.0f} MB ({growth['growth_pct']:+.1f}%); "
          f"report {out / 'soak.json'}, plot soak.png")
    if report["errors"]:
        raise TowerliteError(f"{report['errors']:,} requests failed (first: "
                             f"{report['first_error']}); see {out / 'soak.json'}")
    if growth["growth_pct"] is not None and growth["growth_pct"] >= args.max_growth:
        raise TowerliteError(f"server memory grew {growth['growth_pct']:.1f}% after warm-up "
                             f"(--max-growth {args.max_growth:g})")
    return 0
