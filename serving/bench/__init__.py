"""`towerlite bench`: latency and throughput of a running towerlite server under real requests.

    inputs.py         request texts of held-out users (varied lengths, seeded) + perf_analyzer data
    probe.py          is the server there, what the ensemble composes, which domains it serves
    builtin.py        the asyncio load generator (tritonclient aio, gRPC or HTTP)
    perf_analyzer.py  perf_analyzer located or extracted from tritonclient's wheel, run, parsed
    stats.py          Triton's statistics before/after a level → queue/compute per model
    measured.py       one level's raw measurement → the report's numbers (one schema, both engines)
    runner.py         one run: probe, texts, engine, warm-up, levels
    report.py         JSON / CSV / table / PNG, and the schema check
    compare.py        `bench compare`: reports with the same inputs side by side, as ratios
"""

from .runner import BenchConfig, run

__all__ = ["BenchConfig", "run"]
