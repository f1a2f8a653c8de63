"""`towerlite bench WHAT`: every measurement under one command. Each subcommand is one module
of the stage it measures, holding its own `add_arguments(parser)` and `command(args)`; this
module only puts them in a tree (towerlite.cli registers it, entry.run runs the chosen one).

    serving        towerlite.serving.bench.latency       (what `towerlite bench` was)
    compare        towerlite.serving.bench.compare
    encoders       towerlite.export.benchmark.run        (also python -m towerlite.export.benchmark)
    sweep          towerlite.serving.bench.sweep
    memory         towerlite.serving.bench.memory
    faults         towerlite.serving.bench.faults
    soak           towerlite.serving.bench.soak
    embedding      towerlite.serving.bench.catalog_embedding
    index          towerlite.serving.bench.index
    gpu-encoders   pack: towerlite.serving.bench.gpu_pack
                   run:  towerlite.serving.bench.gpu_encoders
    gpu-serving    texts: towerlite.serving.bench.saved_texts
                   run:   towerlite.serving.bench.gpu_serving
"""

from __future__ import annotations

import argparse

HELP = ("measure: a running server (`bench serving`), reports side by side, encoders, setting "
        "sweeps, memory, faults, GPU runs")

DESCRIPTION = (
    "Measure what towerlite builds, one subcommand each (`towerlite bench WHAT --help` says "
    "what it measures and writes). `towerlite bench serving` is what `towerlite bench` was, "
    "with the same options.")

MOVED = ("`towerlite bench --url …` is now `towerlite bench serving --url …` (the same options); "
         "`towerlite bench --help` lists the rest")


def _tree() -> list[tuple]:
    """(name, help, module or [(name, help, module, aliases)], aliases) in --help order."""
    from towerlite.export.benchmark import run as encoders
    from towerlite.serving.bench import (
        catalog_embedding,
        compare,
        faults,
        gpu_encoders,
        gpu_pack,
        gpu_serving,
        index,
        latency,
        memory,
        saved_texts,
        soak,
        sweep,
    )

    return [
        ("serving", "latency and throughput of a running server under real requests", latency,
         ()),
        ("compare", "bench reports made with the same inputs, side by side as ratios", compare,
         ()),
        ("encoders", "teacher vs student (PyTorch, every ONNX variant) vs the optimum peer, "
                     "sentences/s", encoders, ()),
        ("sweep", "serving settings on one deployed repository, one server at a time", sweep,
         ()),
        ("memory", "server memory, IVF vs exact search latency, the index's recall@10", memory,
         ()),
        ("faults", "stub kill, server restart and short deadlines under load", faults, ()),
        ("soak", "a fresh server under steady load for minutes: failures, memory growth, "
                 "latency drift", soak, ()),
        ("embedding", "catalog embedding items/s by worker processes x threads (deploy "
                      "--workers)", catalog_embedding, ()),
        ("index", "search kinds (exact, IVF-Flat/SQ8/PQ) at growing catalog sizes: recall, "
                  "latency, memory", index, ()),
        ("gpu-encoders", "exported encoders on onnxruntime's CUDA/TensorRT providers (pack here, "
                         "run there)",
         [("pack", "models, token ids and references for the GPU machine", gpu_pack, ()),
          ("run", "time and check the packed models on each provider", gpu_encoders,
           ("bench",))], ()),
        ("gpu-serving", "a deployed repository served and measured on a GPU machine (texts "
                        "here, run there)",
         [("texts", "save the bench's request texts", saved_texts, ()),
          ("run", "serve a repository and measure it with perf_analyzer", gpu_serving, ())], ()),
    ]


class _Moved(argparse.Action):
    """`towerlite bench --url …` (before the subcommand): say where it went."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(MOVED)


def _add(sub, name: str, help: str, target, aliases: tuple[str, ...]) -> None:
    if isinstance(target, list):
        group = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                               aliases=list(aliases))
        steps = group.add_subparsers(dest="bench_step", required=True, metavar="STEP")
        for step in target:
            _add(steps, *step)
        return
    p = sub.add_parser(name, help=help, description=target.DESCRIPTION, aliases=list(aliases))
    target.add_arguments(p)
    p.set_defaults(func=target.command)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", nargs="?", action=_Moved, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="bench_what", required=True, metavar="WHAT")
    for entry in _tree():
        _add(sub, *entry)
