"""`towerlite bench serving` against a REAL Triton server (the 2.51 binary from nvidia-pytriton)
serving the real all-MiniLM-L6-v2 export over 300 MovieLens movies + 100 Book-Crossing books: the
report has every field with ordered percentiles, failed requests are counted, a server that is
down is one line and exit 1, perf_analyzer and the built-in generator both produce valid reports
(the former skipped, with the reason, where its binary cannot run), and `bench compare` refuses
reports of different inputs unless forced. Short runs: the numbers are not the point here.
Every `towerlite bench` subcommand is there, and the old `towerlite bench --url …` says where it
went."""

from __future__ import annotations

import json
import logging
import stat
import sys
from contextlib import contextmanager

import numpy as np
import pytest
from conftest import run_cli

from towerlite.errors import TowerliteError
from towerlite.serving.bench.measured import Measured, latency_summary, summarize
from towerlite.serving.bench.report import validate

# faiss's SWIG bindings warn on import under Python 3.11+
pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__:DeprecationWarning")

N_MOVIES, N_BOOKS = 300, 100
SMALL = ["--concurrency", "1,3", "--requests", "24", "--texts", "40", "--warmup", "6"]


# ---------------------------------------------------------------------------------------------
# no server

def test_latency_summary_is_ordered_and_in_ms():
    lat = list(np.random.default_rng(0).lognormal(-4, 0.6, size=500))
    s = latency_summary(lat)
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= s["max"]
    assert s["max"] == pytest.approx(max(lat) * 1e3, abs=1e-3)
    assert latency_summary([]) is None
    lv = summarize(Measured(2, [0.010, 0.020], wall_s=0.5, errors=2, first_error="boom"))
    assert lv["throughput_rps"] == 4.0 and lv["error_rate"] == 0.5 and lv["first_error"] == "boom"


def test_perf_analyzer_output_is_parsed(tmp_path):
    from towerlite.serving.bench.perf_analyzer import failed_level, parse_csv, parse_export

    reqs = [{"timestamp": t, "response_timestamps": [t + 10_000_000]} for t in
            (1_000_000_000, 1_010_000_000, 1_020_000_000)]
    export = tmp_path / "p.json"
    export.write_text(json.dumps({"experiments": [{
        "experiment": {"mode": "concurrency", "value": 1}, "requests": reqs,
        "window_boundaries": [990_000_000, 1_990_000_000]}]}))
    lat, wall = parse_export(export, 1, by_count=True)
    assert lat == pytest.approx([0.01] * 3) and wall == pytest.approx(0.03)
    assert parse_export(export, 1, by_count=False)[1] == pytest.approx(1.0)
    (tmp_path / "p.csv").write_text("Concurrency,Inferences/Second,Client Send,p50 latency,"
                                    "p99 latency\n1,99.5,4,8417,39789\n")
    assert parse_csv(tmp_path / "p.csv") == {"throughput_rps": 99.5, "p50_ms": 8.417,
                                             "p99_ms": 39.789}
    out = ("Request concurrency: 2\nThread [0] had error: in ensemble 'recommend', scorer: K must "
           "be between 1 and 1000 (MAX_K); got 5000\n\nThread [1] had error: x\n")
    failed = failed_level(out, 2, "recommend")
    assert failed.errors == 2 and failed.first_error.startswith("scorer: K must be")
    assert failed_level("Failed to obtain stable measurement.", 2, "recommend") is None


def test_bad_arguments_are_clear():
    from towerlite.serving.bench.probe import host_port

    assert host_port("grpc://127.0.0.1:8001/") == "127.0.0.1:8001"
    with pytest.raises(TowerliteError, match="not HOST:PORT"):
        host_port("localhost")
    proc = run_cli("bench", "serving", "--url", "127.0.0.1:1", "--concurrency", "1,zero")
    assert proc.returncode == 2 and "comma-separated positive integers" in proc.stderr
    proc = run_cli("bench", "serving")
    assert proc.returncode == 1 and "--url HOST:PORT is required" in proc.stderr


def test_every_bench_subcommand_is_there_and_the_old_form_says_where_it_went(capsys):
    import argparse

    from towerlite import bench_cli

    parser = argparse.ArgumentParser(prog="towerlite bench")
    bench_cli.add_arguments(parser)
    leaves = [["serving"], ["compare", "a.json", "b.json"], ["encoders", "--export-dir", "x"],
              ["sweep", "--repository", "r", "--out", "o", "--variant", "v:"],
              ["memory", "r"], ["faults", "--repository", "r"], ["soak", "r"],
              ["embedding", "m"],
              ["gpu-encoders", "pack", "--model", "m=x.onnx", "--out", "o"],
              ["gpu-encoders", "run", "--dir", "d"], ["gpu-serving", "texts", "--out", "t"],
              ["gpu-serving", "run", "--repository", "r", "--texts", "t", "--perf-analyzer", "p"]]
    modules = {parser.parse_args(argv).func.__module__ for argv in leaves}
    assert len(modules) == len(leaves)
    assert parser.parse_args(["gpu-encoders", "bench", "--dir", "d"]).func.__module__ == \
        "towerlite.serving.bench.gpu_encoders"  # the old step name
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--url", "127.0.0.1:8001", "--concurrency", "1,4"])
    assert exit_.value.code == 2 and "towerlite bench serving --url" in capsys.readouterr().err


def test_release_fault_splits_latency_and_memory_by_phase():
    """`bench faults --faults release`: each request and memory sample lands in the phase it
    started in (the two keep time on different clocks), failures left out of the latencies."""
    from towerlite.serving.bench.faults import _latency_by_phase, _memory_by_phase

    marks = {"release": (10.0, 1.0), "released": (20.0, 11.0), "rollback": (30.0, 21.0),
             "rolled_back": (40.0, 31.0)}
    records = [(5.0, 0.1, None), (12.0, 0.3, None), (15.0, 2.0, "UNAVAILABLE: down"),
               (25.0, 0.2, None), (45.0, 0.4, None)]
    latency = _latency_by_phase(records, marks)
    assert [latency[p]["requests"] for p in latency] == [1, 1, 1, 0, 1]
    assert latency["release_write_and_switch"]["max"] == 300.0
    assert latency["rollback"]["p50"] is None
    samples = [{"t_s": t, "rss_mb": r, "pss_mb": r / 2} for t, r in
               ((0.5, 100), (5.0, 300), (9.0, 200), (25.0, 250), (35.0, 180), (36.0, 120))]
    memory = _memory_by_phase(samples, marks)
    assert memory["before"]["rss_max"] == 100
    assert memory["release_write_and_switch"] == {"samples": 2, "rss_max": 300, "pss_max": 150,
                                                  "rss_last": 200, "pss_last": 100}
    assert memory["after"]["rss_max"] == 180 and memory["after"]["rss_last"] == 120
    assert memory["on_new_release"]["samples"] == 0 and memory["rollback"]["rss_max"] == 250


# ---------------------------------------------------------------------------------------------
# request texts

def test_request_texts_are_held_out_users_varied_and_seeded(cache):
    from towerlite.serving.bench.inputs import build_requests, perf_analyzer_data

    a = build_requests(["movielens"], 60, seed=0)
    assert build_requests(["movielens"], 60, seed=0).fingerprint == a.fingerprint
    assert build_requests(["movielens"], 60, seed=1).fingerprint != a.fingerprint
    assert build_requests(["movielens"], 60, seed=0, k=5).fingerprint != a.fingerprint
    assert len(set(a.texts)) == 60 and all(t.startswith("[movie] ") for t in a.texts)
    assert min(a.items_per_text) == 1 and max(a.items_per_text) >= 8  # varied lengths
    assert all(n == t.count("[movie] ") for n, t in zip(a.items_per_text, a.texts))
    data = perf_analyzer_data(build_requests(["movielens"], 3, domain="movie"))["data"]
    assert data[0]["TEXT"]["shape"] == [1] and data[0]["K"]["content"] == [10]
    assert data[0]["DOMAIN"]["content"] == ["movie"]


# ---------------------------------------------------------------------------------------------
# a real server

@pytest.fixture(scope="module")
def server(exported, cache, tmp_path_factory):
    import pandas as pd

    from towerlite.data import load_bookcrossing, load_movielens
    from towerlite.serving.deploy import deploy
    from towerlite.serving.triton import start_server

    frame = pd.concat([load_movielens().items.head(N_MOVIES),
                       load_bookcrossing().items.head(N_BOOKS)], ignore_index=True)
    out = tmp_path_factory.mktemp("bench-repo")
    deploy(exported, out, variant="int8_dynamic", item_variant="fp32", items=frame,
           index="exact", flavors=("portable",), progress=False)
    log = tmp_path_factory.mktemp("bench-triton-log") / "tritonserver.log"
    with start_server(out / "portable", log_path=log) as srv:
        yield srv


@contextmanager
def logs_to_stderr():
    """Log records on stderr, as entry.run sets them up in a process of its own (in this one,
    pytest's handlers on the root logger make its logging.basicConfig a no-op)."""
    handler, logger = logging.StreamHandler(sys.stderr), logging.getLogger("towerlite")
    was = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(was)


def bench(capsys, *args):
    """`towerlite bench …` in this process: (exit code, stdout, stderr)."""
    from towerlite.cli import main

    capsys.readouterr()
    with logs_to_stderr():
        code = main(["bench", *args])
    got = capsys.readouterr()
    return code, got.out, got.err


def read(folder) -> dict:
    return validate(json.loads((folder / "bench.json").read_text()))


@pytest.fixture(scope="module")
def builtin_run(server, tmp_path_factory):
    from towerlite.cli import main

    out = tmp_path_factory.mktemp("bench-builtin")
    assert main(["bench", "serving", "--url", server.grpc_url, "--engine", "builtin",
                 "--datasets", "movielens", "--label", "builtin", "--out", str(out), *SMALL]) == 0
    return out


def test_report_has_every_field_and_percentiles_are_ordered(builtin_run):
    r = read(builtin_run)
    assert r["engine"]["name"] == "builtin" and r["server"]["version"] == "2.51.0"
    assert r["server"]["composing_models"] == ["tokenizer", "user_encoder", "scorer"]
    assert r["server"]["domains"] == ["movie", "book"]
    assert r["inputs"]["datasets"] == {"movielens": 40} and len(r["inputs"]["fingerprint"]) == 16
    assert r["inputs"]["chars"]["min"] < r["inputs"]["chars"]["max"]
    assert r["machine"]["cores"] >= 1 and "cpu_flags" in r["machine"]
    assert {"cpuidle_driver", "halt_poll_ns"} <= set(r["machine"])  # how an idle core waits
    assert r["versions"]["tritonclient"] == "2.51.0" and r["warmup"]["requests"] == 6
    assert [lv["concurrency"] for lv in r["levels"]] == [1, 3]
    for lv in r["levels"]:
        assert lv["requests"] == 24 and lv["errors"] == 0 and lv["throughput_rps"] > 0
        assert lv["client_cpu_s"] > 0  # the generator's own CPU: it shares the machine
        lat = lv["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        # the server's own counters saw exactly this level's requests, in every composing model
        for model in ("recommend", "tokenizer", "user_encoder", "scorer"):
            split = lv["server"][model]
            assert split["requests"] == 24 and split["failed"] == 0
            assert split["compute_infer_us"] > 0 and split["queue_us"] >= 0
    rows = (builtin_run / "bench.csv").read_text().splitlines()
    assert len(rows) == 3 and "p99_ms" in rows[0] and "user_encoder_queue_us" in rows[0]
    assert (builtin_run / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table_is_printed_and_books_join_when_the_catalog_has_them(server, capsys, tmp_path):
    code, out, err = bench(capsys, "serving", "--url", server.http_url, "--protocol", "http",
                           "--engine", "builtin", "--concurrency", "2", "--duration", "1",
                           "--texts", "20", "--warmup", "0", "--out", str(tmp_path))
    assert code == 0, err
    assert "p99" in out and "user_encoder q/c" in out and "report:" in out
    r = read(tmp_path)
    assert r["inputs"]["datasets"] == {"movielens": 10, "bookcrossing": 10}
    assert r["settings"]["duration_s"] == 1.0 and r["server"]["protocol"] == "http"
    assert r["levels"][0]["requests"] > 0 and r["levels"][0]["wall_s"] >= 1.0


def test_failed_requests_are_counted_not_hidden(server, capsys, tmp_path):
    from towerlite.serving.bench.builtin import Load, run_level
    from towerlite.serving.bench.inputs import RequestSet

    # every request rejected (K above the scorer's MAX_K): exit 1, the report still written
    code, out, err = bench(capsys, "serving", "--url", server.grpc_url, "--engine", "builtin",
                           "--datasets", "movielens", "--k", "2000", "--concurrency", "2",
                           "--requests", "10", "--texts", "10", "--warmup", "0",
                           "--out", str(tmp_path))
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("towerlite: error: 10 of 10 requests failed")
    assert "K must be between 1 and 1000" in err
    lv = read(tmp_path)["levels"][0]
    assert lv["errors"] == 10 and lv["requests"] == 0 and lv["latency_ms"] is None
    # the server saw them fail too (the ensemble's counter: a python model's per-request error
    # counts as a success of its batch there, and Triton 2.51 counts an ensemble failure twice)
    assert lv["server"]["recommend"]["failed"] >= 10 and lv["server"]["recommend"]["requests"] == 0
    # half of them rejected (empty text): counted apart, latencies of the others only
    half = RequestSet(["[movie] Heat (1995). Action|Crime|Thriller", ""] * 4)
    m = run_level(server.grpc_url, "grpc", "recommend", half, 2, Load(requests=8))
    assert m.errors == 4 and len(m.latencies_s) == 4 and "empty" in m.first_error.lower()


def test_a_server_that_is_down_is_one_line_and_exit_1(tmp_path):
    from towerlite.serving.triton import free_port

    for protocol in ("grpc", "http"):
        proc = run_cli("bench", "serving", "--url", f"127.0.0.1:{free_port()}", "--protocol",
                       protocol, "--out", str(tmp_path))
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"towerlite: error: cannot reach Triton at {protocol}://")
        assert "is the server running?" in lines[0]


# ---------------------------------------------------------------------------------------------
# perf_analyzer

def test_embedding_bench_runs_each_worker_count_on_catalog_texts(cache, tiny_export, capsys,
                                                                 tmp_path):
    """`bench embedding`: real catalog texts, one and two worker processes, the same vectors."""
    out = tmp_path / "embedding"
    code, stdout, err = bench(capsys, "embedding", str(tiny_export), "--variant", "fp32",
                              "--items", "40", "--chunk", "16", "--configs", "1x1,2x1",
                              "--repeats", "1", "--max-length", "32", "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "embedding.json").read_text())
    assert [r["config"] for r in report["rows"]] == ["1x1", "2x1"] and report["items"] == 40
    assert all(r["items_per_s_median"] > 0 for r in report["rows"])
    assert report["rows"][1]["max_abs_diff_from_first"] <= 1e-5
    assert "2x1" in stdout
    code, _, err = bench(capsys, "embedding", str(tiny_export), "--configs", "2-1")
    assert code == 1 and "WORKERSxTHREADS" in err


def test_index_bench_measures_each_kind_on_real_queries_and_synthetic_sizes(server, capsys,
                                                                           tmp_path):
    """`bench index`: the deployed catalog and a synthetic 12k one, exact and IVF-SQ8 (read and
    memory-mapped), queries from the deploy's own user tower."""
    out = tmp_path / "index"
    code, stdout, err = bench(capsys, "index", str(server.repository), "--sizes", "0,12000",
                              "--kinds", "exact,ivf_sq8", "--queries", "20", "--nprobe", "4",
                              "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "index.json").read_text())
    real = report["real_items"]
    assert report["queries"] == 20 and real == N_MOVIES + N_BOOKS
    assert [(r["items"], r["kind"], r["load"]) for r in report["rows"]] == [
        (size, kind, load) for size in (real, 12000)
        for kind, load in (("exact", "-"), ("ivf_sq8", "memory"), ("ivf_sq8", "mmap"))]
    for r in report["rows"]:
        assert r["synthetic"] == (0 if r["items"] == real else 12000 - real)
        assert r["p50_ms"] <= r["p99_ms"] and 0 <= r["recall_at_10"] <= 1
    exact = [r for r in report["rows"] if r["kind"] == "exact"]
    assert all(r["recall_at_10"] == 1.0 for r in exact)
    # memory-mapped and read answer alike; the mapped one costs a reader no private copy
    for size in (real, 12000):
        read, mapped = [r for r in report["rows"] if r["items"] == size and r["kind"] != "exact"]
        assert read["recall_at_10"] == mapped["recall_at_10"]
        assert mapped["instance_mb"] < max(1.0, read["instance_mb"])
    # past --in-memory-max the catalog is an fp16 file: exact and IVF-Flat (float32 copies)
    # left out, SQ8 re-scored from the rows (pread) — every list visited: exact's answers
    code, _, err = bench(capsys, "index", str(server.repository), "--sizes", "12000",
                         "--kinds", "exact,ivf,ivf_sq8", "--queries", "20", "--nprobe", "4096",
                         "--max-codes", "0,100", "--in-memory-max", "10000",
                         "--scratch", str(tmp_path / "scratch"), "--out", str(out))
    assert code == 0, err
    rows = json.loads((out / "index.json").read_text())["rows"]
    assert [(r["kind"], r["load"], r["max_codes"]) for r in rows] == [
        ("ivf_sq8", load, cap) for load in ("memory", "mmap") for cap in (0, 100)]
    for r in rows:
        assert r["rescore_from"] == "fp16 rows, read with pread"
        assert r["search_threads"] == 1  # timed as the served stubs search (OMP_NUM_THREADS=1)
        assert 0 < r["serving_rss_mb"] <= r["peak_rss_mb"] + 1_000
        # the stages, timed apart, answered as the timed search did (the bench checks each)
        assert set(r["stages_ms"]) == {"coarse", "scan", "read", "rescore"}
        assert all(0 <= v["p50"] <= v["p99"] for v in r["stages_ms"].values())
    every, capped = rows[0], rows[1]
    assert every["recall_at_10"] >= 0.98 and every["codes_scanned"]["p50"] == 12000
    # a cap stops the scan after the list that reaches it: fewer codes, recall no better
    assert 100 <= capped["codes_scanned"]["p50"] < 12000
    assert capped["recall_at_10"] <= every["recall_at_10"]
    assert list((tmp_path / "scratch").iterdir()) == []  # its temporary folder is gone
    code, _, err = bench(capsys, "index", str(server.repository), "--kinds", "hnsw")
    assert code == 1 and "--kinds: unknown ['hnsw']" in err


def test_soak_runs_windows_samples_memory_and_plots(server, capsys, tmp_path):
    """`bench soak` starts its own server on the repository: two 3-second windows at
    concurrency 4, memory sampled each second; nothing fails and the server's memory is read."""
    out = tmp_path / "soak"
    code, stdout, err = bench(capsys, "soak", str(server.repository), "--minutes", "0.1",
                              "--window", "3", "--sample", "1", "--concurrency", "4",
                              "--texts", "40", "--max-growth", "1000", "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "soak.json").read_text())
    assert len(report["windows"]) == 2 and report["errors"] == 0
    assert report["requests"] == sum(w["requests"] for w in report["windows"]) > 0
    assert all(w["latency_ms"]["p50"] <= w["latency_ms"]["p99"] for w in report["windows"])
    samples = report["memory"]["samples"]
    assert len(samples) >= 4 and all(s["rss_mb"] > 100 and s["pss_mb"] > 0 for s in samples)
    assert report["memory"]["growth_pct"] is not None
    assert (out / "soak.png").stat().st_size > 10_000
    assert "requests, 0 failed" in stdout
    code, _, err = bench(capsys, "soak", str(tmp_path / "nowhere"), "--out", str(out))
    assert code == 1 and "no such repository folder" in err


@pytest.fixture(scope="module")
def perf_analyzer():
    """The binary from tritonclient's wheel, or a skip that says why it cannot run here."""
    from towerlite.serving.bench.perf_analyzer import (
        PerfAnalyzerUnavailable,
        _env,
        check,
        find_binary,
        lib_dir,
    )

    binary = find_binary()
    if binary is None:
        pytest.skip("perf_analyzer is not installed (tritonclient==2.51.0's manylinux1 wheel "
                    "puts it in the environment's bin/)")
    try:
        check(binary, _env(lib_dir()))
    except PerfAnalyzerUnavailable as exc:
        pytest.skip(f"perf_analyzer cannot run on this machine: {exc}")
    return binary


@pytest.fixture(scope="module")
def pa_run(server, perf_analyzer, tmp_path_factory):
    from towerlite.cli import main

    out = tmp_path_factory.mktemp("bench-pa")
    assert main(["bench", "serving", "--url", server.grpc_url, "--engine", "perf_analyzer",
                 "--datasets", "movielens", "--label", "perf_analyzer", "--out", str(out),
                 *SMALL]) == 0
    return out


def test_perf_analyzer_report_has_the_same_schema(pa_run, builtin_run):
    from towerlite.serving.bench.inputs import RequestSet

    r, b = read(pa_run), read(builtin_run)
    assert r["engine"]["name"] == "perf_analyzer" and "2.51.0" in r["engine"]["version"]
    assert r["inputs"]["fingerprint"] == b["inputs"]["fingerprint"]  # the same requests
    fed = json.loads((pa_run / "perf_analyzer" / "input_data.json").read_text())["data"]
    texts = [d["TEXT"]["content"][0] for d in fed]  # what perf_analyzer was fed: the same texts
    assert len(texts) == 40 and RequestSet(texts).fingerprint == b["inputs"]["fingerprint"]
    for lv, blv in zip(r["levels"], b["levels"]):
        assert lv["requests"] == 24 and lv["errors"] == 0
        lat = lv["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert lv["server"]["scorer"]["requests"] >= 24
        assert lv["engine_own"]["throughput_rps"] > 0 and "p50_ms" in lv["engine_own"]
        # same server, same requests: the engines agree to well within an order of magnitude
        # (docs/benchmarks.md has the measured agreement; a busy test machine is noisy)
        assert 1 / 3 < lat["p50"] / blv["latency_ms"]["p50"] < 3
    assert set(r["levels"][0]) == set(b["levels"][0])


def test_perf_analyzer_over_http_for_a_duration(server, perf_analyzer, capsys, tmp_path):
    code, out, err = bench(capsys, "serving", "--url", server.http_url, "--protocol", "http",
                           "--engine", "perf_analyzer", "--datasets", "movielens",
                           "--concurrency", "2", "--duration", "1", "--texts", "10",
                           "--warmup", "0", "--out", str(tmp_path))
    assert code == 0, err
    lv = read(tmp_path)["levels"][0]
    # three windows adding up to about the duration (perf_analyzer stretches them a little)
    assert lv["requests"] > 0 and 0.9 <= lv["wall_s"] < 5 and lv["client_cpu_s"] > 0
    assert lv["server"]["recommend"]["requests"] >= lv["requests"]


def test_perf_analyzer_counts_a_failed_request(server, perf_analyzer, capsys, tmp_path):
    code, out, err = bench(capsys, "serving", "--url", server.grpc_url, "--engine",
                           "perf_analyzer", "--datasets", "movielens", "--k", "2000",
                           "--concurrency", "1", "--requests", "5", "--texts", "5",
                           "--warmup", "0", "--out", str(tmp_path))
    assert code == 1 and "requests failed" in err
    lv = read(tmp_path)["levels"][0]
    assert lv["errors"] >= 1 and "K must be between 1 and 1000" in lv["first_error"]
    assert lv["notes"] and lv["latency_ms"] is None


def test_auto_falls_back_to_builtin_when_perf_analyzer_cannot_run(server, capsys, tmp_path):
    fake = tmp_path / "perf_analyzer"
    fake.write_text("#!/bin/sh\necho 'perf_analyzer: error while loading shared libraries: "
                    "libb64.so.0d: cannot open shared object file' >&2\nexit 127\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    args = ["serving", "--url", server.grpc_url, "--perf-analyzer", str(fake), "--datasets",
            "movielens", "--concurrency", "1", "--requests", "5", "--texts", "5", "--warmup", "0"]
    code, out, err = bench(capsys, *args, "--out", str(tmp_path / "auto"))
    assert code == 0 and "using the built-in asyncio generator" in err
    engine = read(tmp_path / "auto")["engine"]
    assert engine["name"] == "builtin" and "libb64.so.0d" in engine["fallback_reason"]
    code, out, err = bench(capsys, *args, "--engine", "perf_analyzer",
                           "--out", str(tmp_path / "pa"))
    assert code == 1 and err.strip().splitlines() == [err.strip()]  # one line
    assert err.startswith("towerlite: error:") and "cannot run here" in err


# ---------------------------------------------------------------------------------------------
# compare

def test_compare_needs_the_same_inputs_unless_forced(builtin_run, server, capsys, tmp_path):
    other = tmp_path / "other"
    code, _, err = bench(capsys, "serving", "--url", server.grpc_url, "--engine", "builtin",
                         "--datasets", "movielens", "--seed", "1", "--concurrency", "1",
                         "--requests", "8", "--texts", "8", "--warmup", "0", "--label", "seed 1",
                         "--out", str(other))
    assert code == 0, err
    # the same report twice: same inputs, ratios of 1
    a = str(builtin_run / "bench.json")
    code, out, _ = bench(capsys, "compare", a, a, "--out", str(tmp_path / "same"))
    assert code == 0 and "req/s ×" in out
    result = json.loads((tmp_path / "same" / "compare.json").read_text())
    assert [r["label"] for r in result["reports"]] == ["builtin", "builtin (2)"]
    assert all(r["throughput_x"] == 1.0 and r["p50_x"] == 1.0 for r in result["rows"])
    assert (tmp_path / "same" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    # different texts: refused, then forced
    b = str(other / "bench.json")
    code, _, err = bench(capsys, "compare", a, b, "--out", str(tmp_path / "diff"))
    assert code == 1 and "different inputs" in err and "--force" in err
    assert not (tmp_path / "diff" / "compare.json").exists()
    code, out, _ = bench(capsys, "compare", a, b, "--force", "--label", "A", "--label", "B",
                         "--out", str(tmp_path / "forced"))
    assert code == 0 and "inputs differ (forced)" in out
    assert json.loads((tmp_path / "forced" / "compare.json").read_text())["forced"] is True
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = bench(capsys, "compare", a, str(bad), "--out", str(tmp_path / "x"))
    assert code == 1 and "not a towerlite bench report" in err
