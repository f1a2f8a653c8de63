"""In-process speed of an encoder: sentences/s at a batch size, latency percentiles at batch 1.
Tokenization is included: it is part of what a caller pays."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Encode = Callable[[list[str]], np.ndarray]


def throughput(encode: Encode, texts: list[str], repeats: int = 2) -> float:
    """Sentences per second over `texts` (best of `repeats` passes, after a warm-up call)."""
    encode(texts[:8])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    return len(texts) / best


def latency(encode: Encode, texts: list[str], n: int = 200) -> dict:
    """p50/p90/p99 milliseconds of single-text calls over the first `n` texts (cycled)."""
    encode(texts[:1])
    samples = []
    for i in range(n):
        start = time.perf_counter()
        encode([texts[i % len(texts)]])
        samples.append((time.perf_counter() - start) * 1000)
    p50, p90, p99 = np.percentile(samples, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "calls": n}
