"""`towerlite bench index`: the scorer's search kinds at growing catalog sizes, on real user
queries — recall@10 against exact search, per-query latency as the scorer searches (batch 1,
compressed kinds re-scored exactly from the (dim, n) matrix), build time, file size, and the
memory one more scorer instance costs (index read into the process, or memory-mapped and
shared through the page cache).

    towerlite bench index REPOSITORY --sizes 275262,1000000 --kinds exact,ivf,ivf_sq8,ivf_pq

Queries are timed one at a time with faiss on `--search-threads` OpenMP threads (default 1: the
served scorer's stubs run with OMP_NUM_THREADS=1; runs before 2026-12-01 timed with all cores).

REPOSITORY: a portable flavor folder written by deploy: its newest scorer catalog gives the
real item vectors, its user encoder and tokenizer the queries (held-out MovieLens and
Book-Crossing users' texts). Sizes beyond the real catalog are SYNTHETIC: each extra item is a
real item's vector plus seeded Gaussian noise (`--noise`, cosine ≈ 1/√(1+noise²) to its source),
renormalized — the same clusters, denser — so the figures say how search scales, not how a
real 10M catalog ranks.

Past `--in-memory-max` items (2M: a float32 copy of 10M × 384 is 15 GB) the catalog is an fp16
(n, dim) file in the scratch folder, memory-mapped: exact search is computed for the truth (a
chunk of rows at a time) but not timed, IVF-Flat is left out (a float32 copy again), and the
compressed kinds re-score from the fp16 rows, read with pread as the served scorer reads its
rows.npy (`index.RowFile`). Each such row also gives the RSS of a fresh process that reads the
index, opens the rows and answers the queries: what a scorer holds, and the query time by
stage (coarse quantizer, list scan, rows read, exact scores) with the codes each query scanned.
`--max-codes` caps the scan (faiss' max_codes, nearest lists first), as the served scorer's
codes cap does for large catalogs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError
from towerlite.files import write_json_atomic
from towerlite.machine import cpu_info, load_average, package_versions
from towerlite.serving import index as ix

log = logging.getLogger(__name__)

DESCRIPTION = ("The scorer's search kinds (exact, ivf, ivf_sq8, ivf_pq) at growing catalog "
               "sizes on real user queries: recall@10 vs exact, p50/p99 per query, build time, "
               "size, memory per instance; sizes past the real catalog are synthetic (real "
               "vectors plus seeded noise). Prints a table, writes OUT/index.json.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", type=Path, help="a portable flavor folder with a catalog")
    p.add_argument("--sizes", default="0", help="catalog sizes, comma-separated; 0 = the real "
                                                "catalog (default)")
    p.add_argument("--kinds", default="exact,ivf,ivf_sq8,ivf_pq",
                   help=f"search kinds (of {', '.join(ix.SEARCH_KINDS)})")
    p.add_argument("--queries", type=int, default=400, help="held-out users (half each dataset)")
    p.add_argument("--nprobe", default=str(ix.DEFAULT_NPROBE),
                   help=f"lists visited per query, comma-separated (default {ix.DEFAULT_NPROBE})")
    p.add_argument("--noise", type=float, default=0.35, help="synthetic items' noise scale")
    p.add_argument("--in-memory-max", type=int, default=IN_MEMORY_MAX,
                   help="larger catalogs are an fp16 file, memory-mapped (default 2,000,000)")
    p.add_argument("--scratch", type=Path, default=None,
                   help="folder for the index files and the fp16 catalog (default: a temporary "
                        "folder; 10M × 384 needs 8 GB and the index beside it)")
    p.add_argument("--search-threads", default="1",
                   help="faiss' OpenMP threads while queries are timed, comma-separated "
                        "(default 1: the served stubs run with OMP_NUM_THREADS=1); building "
                        "uses every core")
    p.add_argument("--max-codes", default="0",
                   help="compressed kinds: codes scanned at most a query, nearest lists first, "
                        "comma-separated (default 0: every code of the nprobe lists)")
    p.add_argument("--out", type=Path, default=Path("runs/bench-index"))


IN_MEMORY_MAX = 2_000_000


def _queries(repository: Path, count: int) -> np.ndarray:
    import json

    from towerlite.runtime import OnnxEncoder

    from .inputs import held_out_texts

    spec = json.loads((repository.parent / "deploy_report.json").read_text())["spec"]
    encoder = OnnxEncoder(repository / "user_encoder" / "1" / "model.onnx",
                          repository / "tokenizer" / "1" / "tokenizer.json",
                          max_length=spec["max_length"], threads=2)
    texts = [t for d in ("movielens", "bookcrossing")
             for t, _ in held_out_texts(d, (count + 1) // 2)]
    return encoder.encode(texts[:count])


def synthetic(base: np.ndarray, size: int, noise: float, seed: int = 0,
              path: Path | None = None) -> np.ndarray:
    """`size` rows: the real ones, then real rows (drawn with replacement) plus noise; float32
    in memory, or written to `path` as an fp16 (size, dim) file and returned memory-mapped."""
    if size <= len(base) and path is None:
        return base[:size]
    if path is None:
        out = np.empty((size, base.shape[1]), dtype=np.float32)
    else:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                        shape=(size, base.shape[1]))
    out[:min(size, len(base))] = base[:size]
    rng = np.random.default_rng(seed)
    scale = noise / np.sqrt(base.shape[1])
    for start in range(len(base), size, 500_000):
        stop = min(start + 500_000, size)
        rows = base[rng.integers(0, len(base), stop - start)]
        rows = rows + rng.normal(0, scale, rows.shape).astype(np.float32)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    if path is not None:
        out.flush()
        return np.load(path, mmap_mode="r")
    return out


def _latencies(search, queries: np.ndarray) -> tuple[list[np.ndarray], np.ndarray,
                                                      np.ndarray]:
    """(results, ms a query on the first pass, ms on a second pass). The first pass pays for
    the pages a memory-mapped index has not touched yet in this process; a server that has
    answered for a while runs like the second."""
    runs = []
    for _ in range(2):
        found, times = [], []
        for q in queries:
            t0 = time.perf_counter()
            found.append(search(q))
            times.append(time.perf_counter() - t0)
        runs.append(np.array(times) * 1e3)
    return found, runs[0], runs[1]


def _codes_scanned(ivf, lists: np.ndarray) -> int:
    """Codes a search scans in `lists` (nearest first): faiss stops after the list that takes
    the count to max_codes."""
    total = 0
    for lst in lists[lists >= 0]:
        total += ivf.invlists.list_size(int(lst))
        if ivf.max_codes and total >= ivf.max_codes:
            break
    return total


def _parts(searcher: ix.Searcher, queries: np.ndarray, k: int, found: list) -> dict:
    """Where a compressed kind's query time goes, timed stage by stage on a third pass: the
    coarse quantizer (the HNSW graph or a scan of the centroids), the scan of the chosen lists'
    codes, the candidates' rows read, their exact scores and order. Each query's answer must be
    the one `Searcher.top_k` gave (the stages are the same work). The p99 query's stages are
    the means over the slowest 1% of queries."""
    ivf = ix.faiss_ivf(searcher.index)
    # search_preassigned takes no search parameters in faiss' python API: set on the index
    saved = ivf.nprobe, ivf.max_codes
    ivf.nprobe, ivf.max_codes = searcher.params.nprobe, searcher.params.max_codes
    names = ("coarse", "scan", "read", "rescore")
    times, codes = np.zeros((len(queries), len(names))), np.zeros(len(queries), np.int64)
    try:
        for i, query in enumerate(queries):
            q = np.ascontiguousarray(query[None, :], dtype=np.float32)
            t0 = time.perf_counter()
            dist, lists = ivf.quantizer.search(q, ivf.nprobe)
            t1 = time.perf_counter()
            _, rows = ivf.search_preassigned(q, k * searcher.rescore, lists, dist)
            t2 = time.perf_counter()
            rows = np.sort(rows[0][rows[0] >= 0])
            vectors = searcher.rows[rows]
            t3 = time.perf_counter()
            exact = vectors.astype(np.float32) @ query
            top = rows[np.argsort(-exact, kind="stable")[:k]]
            t4 = time.perf_counter()
            if list(top) != list(found[i]):
                raise AssertionError(f"query {i}: the timed stages answered differently")
            times[i] = np.diff([t0, t1, t2, t3, t4])
            codes[i] = _codes_scanned(ivf, lists[0])
    finally:
        ivf.nprobe, ivf.max_codes = saved
    times *= 1e3
    total = times.sum(1)
    slowest = total >= np.percentile(total, 99)
    return {"stages_ms": {name: {"p50": round(float(np.percentile(times[:, j], 50)), 3),
                                 "p99": round(float(np.percentile(times[:, j], 99)), 3),
                                 "slowest_1pct_mean": round(float(times[slowest, j].mean()), 3)}
                          for j, name in enumerate(names)},
            "codes_scanned": {"p50": int(np.percentile(codes, 50)),
                              "p99": int(np.percentile(codes, 99)), "max": int(codes.max()),
                              "slowest_1pct_mean": int(codes[slowest].mean())},
            "list_imbalance": round(float(ivf.invlists.imbalance_factor()), 2)}


_INSTANCE_MB = """
import sys
from pathlib import Path
import faiss  # noqa: F401  (the library's own memory is not the index's)
from towerlite.serving.index import read_index
def anon():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("RssAnon:")) / 1e3
before = anon()
index = read_index(Path(sys.argv[1]), mmap=sys.argv[2] == "mmap")
print(anon() - before)
"""


_SERVING_RSS_MB = """
import sys
import numpy as np
from pathlib import Path
from towerlite.serving.index import RowFile, Searcher, read_index
index = read_index(Path(sys.argv[1]), mmap=sys.argv[2] == "mmap")
rows = RowFile(Path(sys.argv[3]))
searcher = Searcher(index, None, int(sys.argv[5]), int(sys.argv[6]), rows=rows)
for q in np.load(sys.argv[4]):
    searcher.top_k(q, 10)
with open("/proc/self/status") as f:
    print(next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1e3)
"""


def _serving_rss_mb(path: Path, load: str, rows: Path, queries: Path, nprobe: int,
                    rescore: int) -> float:
    """RSS of a fresh process that reads (or maps) the index, reads the fp16 rows with pread
    and answers the queries once: the index, python and faiss (the rows read stay in the page
    cache, not in the process)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _SERVING_RSS_MB, str(path), load, str(rows),
                          str(queries), str(nprobe), str(rescore)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _instance_mb(path: Path, load: str) -> float:
    """Private (anonymous) memory one more scorer instance adds by reading the index, in a
    fresh process: a memory-mapped index's pages are the page cache's, one copy for every
    process that maps the file (RSS counts them in each; PSS splits them)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _INSTANCE_MB, str(path), load], check=True,
                         capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process' peak RSS so far (building, truth and searching included)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def _row(kind: str, load: str, found, cold, warm, truth, k: int, **extra) -> dict:
    recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)]))
    return {"kind": kind, "load": load, "recall_at_10": recall,
            "p50_ms": float(np.percentile(warm, 50)), "p99_ms": float(np.percentile(warm, 99)),
            "first_pass_p50_ms": float(np.percentile(cold, 50)),
            "first_pass_p99_ms": float(np.percentile(cold, 99)), **extra}


@contextmanager
def search_threads(count: int):
    """faiss' OpenMP threads and numpy's BLAS threads set to `count` for the block, as the
    served stubs run (OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1); the index was built with all.
    Until the 10M stage run of 2026-12-01 only faiss' threads were set: exact scores ran on
    OpenBLAS' threads, which wait for a busy core."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=count):
        yield


def measure(kind: str, matrix: np.ndarray, matrix_t: np.ndarray | None, queries: np.ndarray,
            truth: np.ndarray, nprobes: list[int], scratch: Path, k: int = 10,
            lists: dict | None = None, threads: tuple[int, ...] = (1,),
            max_codes_list: tuple[int, ...] = (0,)) -> list[dict]:
    """Rows for one kind at one size: exact, or the index read and memory-mapped at each
    nprobe. `matrix_t` None: `matrix` is the memory-mapped fp16 file, whose rows re-score
    (read with pread, as the scorer does).
    `lists`: the size's coarse centroids, kept from its first index for the next (the k-means
    is the same for every kind: 10 minutes at 10M items)."""
    if kind == "exact":
        found, cold, warm = _latencies(partial(ix.exact_top_k_t, matrix_t, k=k), queries)
        return [_row("exact", "-", found, cold, warm, truth, k, build_s=0.0,
                     file_mb=matrix.nbytes / 1e6, instance_mb=0.0)]
    lists = {} if lists is None else lists
    t0 = time.perf_counter()
    index = ix.build_index(kind, matrix, progress=True, centroids=lists.get("centroids"))
    build_s = time.perf_counter() - t0
    shared_lists = "centroids" in lists
    lists.setdefault("centroids", ix.coarse_centroids(index))
    path = scratch / f"{kind}.faiss"
    ix.write_index(index, path)
    nlist = int(ix.faiss_ivf(index).nlist)
    del index
    gc.collect()
    rows = []
    row_file = None if matrix_t is not None else ix.RowFile(Path(matrix.filename))
    for load in ("memory", "mmap"):
        index = ix.read_index(path, mmap=load == "mmap")
        instance_mb = _instance_mb(path, load)
        for nprobe, count, max_codes in ((n, c, m) for n in nprobes for c in threads
                                         for m in max_codes_list):
            rescore = ix.RESCORE.get(kind, 0)
            searcher = ix.Searcher(index, matrix_t, nprobe, rescore, rows=row_file,
                                   max_codes=max_codes)
            with search_threads(count):
                found, cold, warm = _latencies(partial(searcher.top_k, k=k), queries)
                parts = _parts(searcher, queries, k, found) if row_file is not None else {}
            extra = {"max_codes": max_codes, **parts}
            if matrix_t is None:
                np.save(scratch / "queries.npy", queries)
                extra |= {"rescore_from": "fp16 rows, read with pread",
                          "serving_rss_mb": _serving_rss_mb(path, load, Path(matrix.filename),
                                                            scratch / "queries.npy", nprobe,
                                                            rescore)}
            rows.append(_row(kind, load, found, cold, warm, truth, k, build_s=build_s,
                             lists_from_previous_kind=shared_lists,
                             file_mb=path.stat().st_size / 1e6, instance_mb=instance_mb,
                             nlist=nlist, nprobe=nprobe, rescore=rescore,
                             search_threads=count, **extra))
        del index
        gc.collect()
    if row_file is not None:
        row_file.close()
    return rows


def command(args: argparse.Namespace) -> int:
    from towerlite.serving.catalog import read_catalog
    from towerlite.serving.catalog_update import serving_version

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ix.SEARCH_KINDS]
    if unknown or not kinds:
        raise TowerliteError(f"--kinds: unknown {unknown}; choose from {ix.SEARCH_KINDS}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        nprobes = [int(s) for s in args.nprobe.split(",")]
        threads = tuple(int(s) for s in args.search_threads.split(","))
        max_codes = tuple(int(s) for s in args.max_codes.split(","))
    except ValueError:
        raise TowerliteError("--sizes, --nprobe, --search-threads and --max-codes: whole "
                             "numbers, comma-separated") from None
    if min(max_codes) < 0:
        raise TowerliteError("--max-codes: 0 (no cap) or a positive number of codes")
    folder = args.repository / "scorer" / str(serving_version(args.repository)) / "catalog"
    emb, _, _ = read_catalog(folder)
    base = np.ascontiguousarray(emb, dtype=np.float32)
    queries = _queries(args.repository, args.queries)
    log.info(f"{len(base):,} real items, {len(queries)} real user queries")
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every kind: a long run (10M items: an hour) keeps what it has
        report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "repository": str(args.repository), "real_items": len(base),
                  "queries": len(queries), "noise": args.noise, "machine": cpu_info(),
                  "load_average": load_average(),
                  "versions": package_versions("faiss-cpu", "numpy"), "rows": rows}
        write_json_atomic(args.out / "index.json", report)

    if args.scratch:
        args.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="towerlite-index-", dir=args.scratch) as scratch:
        scratch = Path(scratch)
        for size in sizes:
            size = size or len(base)
            on_disk = size > args.in_memory_max
            t0 = time.perf_counter()
            matrix = synthetic(base, size, args.noise,
                               path=scratch / "catalog_f16.npy" if on_disk else None)
            matrix_t = None if on_disk else np.ascontiguousarray(matrix.T)
            truth = ix.exact_top_k(matrix, queries, 10)
            log.info(f"{size:,} items: catalog and exact truth in {time.perf_counter() - t0:.0f} s")
            lists = {}
            for kind in kinds:
                if on_disk and kind in ("exact", "ivf"):
                    log.info(f"{size:,} items: {kind} left out (a float32 copy of the catalog)")
                    continue
                log.info(f"{size:,} items: {kind} …")
                for row in measure(kind, matrix, matrix_t, queries, truth, nprobes, scratch,
                                   lists=lists, threads=threads, max_codes_list=max_codes):
                    rows.append({"items": size, "synthetic": max(0, size - len(base)),
                                 "peak_rss_mb": _peak_rss_mb(), **row})
                    log.info(str(rows[-1]))
                save()
            del matrix, matrix_t
            gc.collect()
    save()

    print(f"{'items':>10} {'kind':<8} {'load':<6} {'nprobe':>6} {'cap':>6} {'thr':>3} "
          f"{'recall@10':>9} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'1st p50':>7} {'build s':>7} {'file MB':>8} "
          f"{'+MB/inst':>8} {'RSS MB':>7}")
    for r in rows:
        print(f"{r['items']:>10,} {r['kind']:<8} {r['load']:<6} {r.get('nprobe', '-'):>6} "
              f"{r.get('max_codes') or '-':>6} "
              f"{r.get('search_threads', '-'):>3} {r['recall_at_10']:>9.3f} "
              f"{r['p50_ms']:>7.2f} {r['p99_ms']:>7.2f} "
              f"{r['first_pass_p50_ms']:>7.2f} {r['build_s']:>7.1f} {r['file_mb']:>8.0f} "
              f"{r['instance_mb']:>8.0f} {r.get('serving_rss_mb', float('nan')):>7.0f}")
    for r in (r for r in rows if "stages_ms" in r):
        codes = r["codes_scanned"]
        print(f"{r['items']:>10,} {r['kind']} {r['load']} nprobe {r['nprobe']} cap "
              f"{r['max_codes'] or '-'}: p50 / p99 / slowest 1% ms " + ", ".join(
                  f"{name} {v['p50']:.2f}/{v['p99']:.2f}/{v['slowest_1pct_mean']:.2f}"
                  for name, v in r["stages_ms"].items())
              + f"; codes scanned p50 {codes['p50']:,}, p99 {codes['p99']:,}, slowest 1% "
                f"{codes['slowest_1pct_mean']:,}"
                f"; list imbalance {r['list_imbalance']}")
    print(f"report: {args.out / 'index.json'}")
    return 0
