"""`towerlite bench embedding`: catalog embedding throughput by worker processes × onnxruntime
threads each — what `towerlite deploy --workers N --threads T` does — on real catalog texts
(the first items of the MovieLens and Book-Crossing catalogs, rendered as deploy renders them).

    towerlite bench embedding EXPORT_DIR --items 16384 --configs 1x1,1x2,2x1 --repeats 3

Every configuration embeds the same texts into a fresh cache folder (no cache hits), in the
order given, repeated; the table shows the median items/s, the spread, the speed-up over the
first configuration and the largest difference from its vectors (the same chunks, so the same
vectors up to float rounding).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError
from towerlite.files import write_json_atomic
from towerlite.machine import cpu_info, load_average, package_versions
from towerlite.runtime import VARIANT_FILES, OnnxEncoder
from towerlite.serving import catalog as cat

log = logging.getLogger(__name__)

DESCRIPTION = ("Catalog embedding throughput by worker processes × onnxruntime threads each "
               "(deploy's --workers and --threads) on real catalog texts; prints a table and "
               "writes OUT/embedding.json.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="an export folder (or an .onnx file beside its "
                                            "tokenizer.json)")
    p.add_argument("--variant", default="int8_dynamic", choices=list(VARIANT_FILES),
                   help="the export variant when MODEL is a folder (default int8_dynamic)")
    p.add_argument("--items", type=int, default=16384, help="catalog items embedded (default "
                                                            "16384: MovieLens, then books)")
    p.add_argument("--configs", default="1x1,1x2,2x1",
                   help="WORKERSxTHREADS each, comma-separated (default 1x1,1x2,2x1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk", type=int, default=cat.CHUNK,
                   help=f"items per cached chunk, the unit of work (default {cat.CHUNK})")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("runs/bench-embedding"))


def _configs(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in c.lower().split("x")) for c in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise TowerliteError(f"--configs {text!r}: WORKERSxTHREADS pairs, e.g. 1x1,1x2,2x1")
    return pairs


def _onnx(model: Path, variant: str) -> Path:
    path = model / VARIANT_FILES[variant] if model.is_dir() else model
    if not path.is_file():
        raise TowerliteError(f"{path}: no such file (an export folder from `towerlite export`)")
    return path


def command(args: argparse.Namespace) -> int:
    configs = _configs(args.configs)
    onnx = _onnx(args.model, args.variant)
    names = cat.catalog_names("both")
    items = cat.catalog_items(names)
    if args.items < 1 or args.chunk < 1 or args.repeats < 1:
        raise TowerliteError("--items, --chunk and --repeats are at least 1")
    texts = items["text"].tolist()[:args.items]
    log.info(f"{len(texts):,} catalog texts, {onnx}")
    runs: dict[str, list[float]] = {f"{w}x{t}": [] for w, t in configs}
    reference, max_diff = None, {}
    with tempfile.TemporaryDirectory(prefix="towerlite-embed-") as scratch:
        for repeat in range(args.repeats):
            for workers, threads in configs:
                name = f"{workers}x{threads}"
                folder = Path(scratch) / name
                shutil.rmtree(folder, ignore_errors=True)
                t0 = time.perf_counter()
                encoder = OnnxEncoder(onnx, max_length=args.max_length,
                                      threads=workers * threads)
                vectors = cat.embed_catalog(texts, encoder, cache_dir=folder, progress=False,
                                            workers=workers, chunk=args.chunk)
                seconds = time.perf_counter() - t0
                runs[name].append(len(texts) / seconds)
                if reference is None:
                    reference = vectors
                max_diff[name] = max(max_diff.get(name, 0.0),
                                     float(np.abs(vectors - reference).max()))
                log.info(f"repeat {repeat + 1}: {name} {len(texts) / seconds:,.0f} items/s")
    first = f"{configs[0][0]}x{configs[0][1]}"
    rows = []
    for name, rates in runs.items():
        median = float(np.median(rates))
        rows.append({"config": name, "workers": int(name.split("x")[0]),
                     "threads_each": int(name.split("x")[1]), "items_per_s_median": median,
                     "items_per_s_min": float(min(rates)), "items_per_s_max": float(max(rates)),
                     "speedup_over_first": median / float(np.median(runs[first])),
                     "max_abs_diff_from_first": max_diff[name], "runs": rates})
    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "model": str(onnx),
              "items": len(texts), "repeats": args.repeats, "machine": cpu_info(),
              "load_average": load_average(), "versions": package_versions(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "embedding.json", report)
    print(f"{'workers x threads':<18} {'items/s (median)':>16} {'spread':>15} "
          f"{'vs ' + first:>8} {'max |diff|':>10}")
    for r in rows:
        spread = f"{r['items_per_s_min']:,.0f}-{r['items_per_s_max']:,.0f}"
        print(f"{r['config']:<18} {r['items_per_s_median']:>16,.0f} {spread:>15} "
              f"{r['speedup_over_first']:>7.2f}x {r['max_abs_diff_from_first']:>10.1e}")
    print(f"report: {args.out / 'embedding.json'}")
    return 0
