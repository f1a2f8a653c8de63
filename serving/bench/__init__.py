"""`towerlite bench serving|compare|sweep|memory|faults|gpu-encoders|gpu-serving`: what the
serving stage measures. Each command's module holds its `add_arguments` and `command`;
towerlite/bench_cli.py puts them under `towerlite bench`.

    latency.py        `bench serving`: latency and throughput of a running server
    compare.py        `bench compare`: reports with the same inputs side by side, as ratios
    sweep.py          `bench sweep`: serving settings on one repository, one server at a time
    memory.py         `bench memory`: server memory, IVF vs exact latency and recall
    faults.py         `bench faults`: faults against a real server under load
    gpu_pack.py       `bench gpu-encoders pack`: encoders, token ids, references for a GPU machine
    gpu_encoders.py   `bench gpu-encoders run`: the packed encoders on each execution provider
    saved_texts.py    `bench gpu-serving texts`: the request texts, saved for another machine
    gpu_serving.py    `bench gpu-serving run`: a deployed repository served and measured there

and what `bench serving` is made of:

    inputs.py         request texts of held-out users (varied lengths, seeded) + perf_analyzer data
    probe.py          is the server there, what the ensemble composes, which domains it serves
    builtin.py        the asyncio load generator (tritonclient aio, gRPC or HTTP)
    perf_analyzer.py  perf_analyzer located or extracted from tritonclient's wheel, run, parsed
    stats.py          Triton's statistics before/after a level → queue/compute per model
    measured.py       one level's raw measurement → the report's numbers (one schema, both engines)
    runner.py         one run: probe, texts, engine, warm-up, levels
    report.py         JSON / CSV / table / PNG, and the schema check
"""
