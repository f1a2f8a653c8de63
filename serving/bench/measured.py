"""What a load generator hands back for one concurrency level, and the numbers the report
keeps from it. Both engines fill the same `Measured`, so the report is one schema whichever
generated the load: percentiles come from numpy over the per-request latencies (client side,
successful requests), throughput is successful requests over the measured window's wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Measured:
    concurrency: int
    latencies_s: list[float]  # one per successful request, client side
    wall_s: float  # the measured window: first request sent → last response
    errors: int = 0
    first_error: str | None = None
    notes: list[str] = field(default_factory=list)
    engine_own: dict = field(default_factory=dict)  # the generator's own summary, for reference
    client_cpu_s: float | None = None  # CPU the load generator itself used (it shares the machine)


def cpu_seconds(who: int) -> float:
    """User + system CPU of this process (RUSAGE_SELF) or its finished children."""
    import resource

    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def latency_summary(latencies_s: list[float]) -> dict | None:
    """mean, p50/p90/p95/p99, min and max in milliseconds (None when nothing succeeded)."""
    if not latencies_s:
        return None
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    out = {"mean": float(ms.mean()), "min": float(ms.min())}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(ms, PERCENTILES))})
    out["max"] = float(ms.max())
    return {k: round(v, 3) for k, v in out.items()}


def summarize(m: Measured) -> dict:
    ok = len(m.latencies_s)
    return {"concurrency": m.concurrency, "requests": ok, "errors": m.errors,
            "error_rate": round(m.errors / (ok + m.errors), 4) if ok + m.errors else 0.0,
            "first_error": m.first_error, "wall_s": round(m.wall_s, 3),
            "throughput_rps": round(ok / m.wall_s, 2) if m.wall_s > 0 else 0.0,
            "latency_ms": latency_summary(m.latencies_s),
            "client_cpu_s": None if m.client_cpu_s is None else round(m.client_cpu_s, 3),
            "notes": m.notes, "engine_own": m.engine_own}
