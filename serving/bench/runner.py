"""One benchmark run: probe the server, draw the request texts, pick the engine, warm up, then
per concurrency level read Triton's statistics, run the level, read them again."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import ensure_writable_dir
from towerlite.machine import load_average

from . import report as rep
from .builtin import BuiltinEngine, Load
from .inputs import DATASET_DOMAIN, build_requests
from .measured import summarize
from .probe import ServerInfo, probe
from .stats import delta, snapshot

ENGINES = ("auto", "perf_analyzer", "builtin")
DATASET_CHOICES = ("auto", "movielens", "bookcrossing", "both")

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    url: str
    out: Path
    model: str = "recommend"
    protocol: str = "grpc"
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    duration_s: float | None = 10.0
    requests: int | None = None
    engine: str = "auto"
    texts: int = 1000
    datasets: str = "auto"
    seed: int = 0
    k: int = 10
    domain: str | None = None
    max_history: int = 10
    history_ids: int = 50  # a history model's requests: up to this many liked item ids
    warmup: int = 50
    timeout_s: float = 30.0
    perf_analyzer: Path | None = None
    label: str | None = None

    def check(self) -> Load:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise TowerliteError("--concurrency takes positive integers, e.g. 1,2,4,8,16")
        if self.engine not in ENGINES:
            raise TowerliteError(f"--engine is one of {', '.join(ENGINES)}")
        if self.datasets not in DATASET_CHOICES:
            raise TowerliteError(f"--datasets is one of {', '.join(DATASET_CHOICES)}")
        if self.warmup < 0 or self.timeout_s <= 0:
            raise TowerliteError("--warmup must be at least 0 and --timeout positive")
        return Load(self.duration_s, self.requests)


def choose_datasets(choice: str, info: ServerInfo, domain: str | None) -> list[str]:
    """auto: the datasets whose domain the served catalog holds (MovieLens when unknown)."""
    served = info.domains
    wanted = [d.strip() for d in (domain or "").split(",") if d.strip()]
    if served and [d for d in wanted if d not in served]:
        raise TowerliteError(f"--domain {domain}: the served catalog has {', '.join(served)}")
    if choice == "both":
        return list(DATASET_DOMAIN)
    if choice != "auto":
        return [choice]
    by_domain = {v: k for k, v in DATASET_DOMAIN.items()}
    return [by_domain[d] for d in served if d in by_domain] or ["movielens"]


def pick_engine(cfg: BenchConfig) -> tuple[object, str | None]:
    """The engine, and why auto fell back to the built-in one (None when it did not)."""
    if cfg.engine == "builtin":
        return BuiltinEngine(cfg.protocol), None
    from .perf_analyzer import PerfAnalyzerEngine, PerfAnalyzerUnavailable

    workdir = ensure_writable_dir(Path(cfg.out) / "perf_analyzer", "perf_analyzer folder")
    try:
        return PerfAnalyzerEngine(cfg.protocol, workdir, cfg.perf_analyzer), None
    except PerfAnalyzerUnavailable as exc:
        if cfg.engine == "perf_analyzer":
            raise
        log.warning(f"perf_analyzer cannot be used ({exc}); using the built-in asyncio "
                    "generator")
        return BuiltinEngine(cfg.protocol), str(exc)


def warm_up(cfg: BenchConfig, info: ServerInfo, requests) -> dict:
    """A few requests through the built-in generator before anything is measured: loads code
    paths, fills caches, opens connections (the same for both engines)."""
    if not cfg.warmup:
        return {"requests": 0, "errors": 0}
    from .builtin import run_level

    began = time.monotonic()
    m = run_level(info.url, cfg.protocol, cfg.model, requests, min(4, max(cfg.concurrency)),
                  Load(requests=cfg.warmup), cfg.timeout_s)
    return {"requests": cfg.warmup, "errors": m.errors, "first_error": m.first_error,
            "seconds": round(time.monotonic() - began, 2)}


def settled(url: str, protocol: str, models: list[str], model: str, before: dict,
            succeeded: int, wait_s: float = 5.0) -> dict:
    """The statistics once they hold the level's requests: Triton counts a request after its
    response is on its way, so a read right after the last response can miss the last one,
    in the ensemble and in each composing model (every successful request passed them all)."""
    deadline = time.monotonic() + wait_s
    while True:
        after = snapshot(url, protocol, models)
        done = min(after.get(m, {}).get("success", 0) - before.get(m, {}).get("success", 0)
                   for m in {model, *models})
        if done >= succeeded or time.monotonic() >= deadline:
            return after
        time.sleep(0.05)


def _line(lv: dict) -> str:
    lat = lv["latency_ms"] or {}
    text = (f"concurrency {lv['concurrency']}: {lv['requests']:,} ok, {lv['errors']} errors, "
            f"{lv['throughput_rps']:,.1f} req/s")
    if lat:
        text += f", p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
    return text


def run(cfg: BenchConfig) -> dict:
    """Measure every level; the report (not yet written: see report.write)."""
    load = cfg.check()
    started, began = datetime.now(timezone.utc), time.monotonic()
    ensure_writable_dir(cfg.out, "bench output folder")
    engine, fallback = pick_engine(cfg)  # first: an unusable engine fails in a second
    info = probe(cfg.url, cfg.protocol, cfg.model, min(cfg.timeout_s, 10.0))
    datasets = choose_datasets(cfg.datasets, info, cfg.domain)
    log.info(f"Triton {info.server_version} at {cfg.protocol}://{info.url}: {cfg.model} = "
             f"{' → '.join(info.composing)}; catalog domains: {', '.join(info.domains) or '?'}")
    kind = "history" if "HISTORY" in info.inputs else "text"
    requests = build_requests(datasets, cfg.texts, cfg.seed, cfg.k, cfg.domain,
                              cfg.max_history if kind == "text" else cfg.history_ids, kind)
    fewer = (f" (all the held-out users there are; --texts asked {cfg.texts:,})"
             if len(requests.texts) < cfg.texts else "")
    log.info(f"{len(requests.texts):,} request {'histories' if kind == 'history' else 'texts'} "
             f"from held-out users of {', '.join(datasets)}{fewer}, fingerprint "
             f"{requests.fingerprint}")
    load_before = load_average()
    models = list(dict.fromkeys([cfg.model, *info.composing]))
    start = snapshot(info.url, cfg.protocol, models)
    warm = warm_up(cfg, info, requests)
    # each level starts from settled counters: the warm-up's (or the last level's) final
    # requests must not land in the next level's statistics
    before = settled(info.url, cfg.protocol, models, cfg.model, start,
                     warm["requests"] - warm["errors"])
    levels = []
    for c in cfg.concurrency:
        measured = engine.run_level(info.url, cfg.model, requests, c, load, cfg.timeout_s)
        level = summarize(measured)
        after = settled(info.url, cfg.protocol, models, cfg.model, before,
                        len(measured.latencies_s))
        level["server"] = delta(before, after)
        before = after
        log.info(_line(level))
        levels.append(level)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("url", "out", "label")}
    settings.update(concurrency=list(cfg.concurrency), out=str(cfg.out),
                    perf_analyzer=str(cfg.perf_analyzer) if cfg.perf_analyzer else None)
    return {
        "schema": rep.SCHEMA, "label": cfg.label or f"{cfg.model}@{info.url}",
        "created": started.isoformat(timespec="seconds"),
        "engine": {"name": engine.name, "requested": cfg.engine, "fallback_reason": fallback,
                   **engine.detail},
        "server": info.describe(), "settings": settings, "inputs": requests.describe(),
        "machine": {**rep.machine(), "load_average_before": load_before,
                    "load_average_after": load_average()},
        "versions": {**rep.versions(), "tritonserver": info.server_version},
        "warmup": warm, "levels": levels, "seconds": round(time.monotonic() - began, 1)}
