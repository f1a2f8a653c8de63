"""`towerlite demo`: the whole chain on the embedded default, ending in one summary.

    prepare → distill (preset `demo`) → finetune (preset `demo`: the distilled student on
    MovieLens interactions) → export (fp32 + int8) → history (the history user tower over the
    export's item vectors) → deploy (portable, MovieLens, both user paths) → serve → eval
    (in-process and through Triton; SASRec beside the baselines) → bench → summary

Each step is the same `towerlite` subcommand a user would run, in this process, writing under
OUT/; the server is stopped however the demo ends. Caches (assets, teacher and catalog
embeddings) make a rerun much faster; finished distill candidates are skipped.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .errors import TowerliteError
from .files import write_json_atomic

# the history tower and the SASRec yardstick train this many epochs in the demo (the
# documented runs use 20: docs/quality.md); ≈ 1 min an epoch each on MovieLens, 2 cores
DEMO_EPOCHS = 5


def _say(msg: str) -> None:
    print(f"\n== demo: {msg}", file=sys.stderr, flush=True)


def _step(name: str, argv: list[str], timings: dict, main: Callable[[list[str]], int]) -> None:
    _say(f"{name}: towerlite {' '.join(argv)}")
    t0 = time.monotonic()
    if main(argv) != 0:
        raise TowerliteError(
            f"demo step {name!r} failed (see above); rerun `towerlite demo` to "
            "resume: finished work is cached"
        )
    timings[name] = round(time.monotonic() - t0, 1)


def _user_tower_latency(export: Path, texts: list[str]) -> dict:
    """Batch-1 encode latency (ms, median) of the user tower: teacher PyTorch vs student int8."""
    from towerlite.runtime import OnnxEncoder

    from .models import SentenceEncoder

    def median_ms(encode) -> float:
        encode(texts[:3])  # warm-up
        times = []
        for t in texts:
            t0 = time.perf_counter()
            encode([t])
            times.append((time.perf_counter() - t0) * 1e3)
        return round(statistics.median(times), 2)

    teacher = SentenceEncoder("teacher")
    student = OnnxEncoder(export / "model_int8_dynamic.onnx", max_length=128)
    return {
        "texts": len(texts),
        "teacher_pytorch_ms": median_ms(lambda b: teacher.encode(b, max_length=128)),
        "student_int8_ms": median_ms(student.encode),
    }


def _history_via_triton(folder: Path, repository: Path, url: str) -> dict:
    """recommend_history on 100 held-out users against the same tower in-process, over the
    item table the deploy wrote (the int8 item tower's rows depend on its batching)."""
    from towerlite.evaluation.cases import build_cases
    from towerlite.sequential import SavedTower
    from towerlite.serving.served_quality import deployed_table, served_agreement

    tower = SavedTower.load(folder)
    cases = build_cases("movielens", users=200)
    table = deployed_table(repository, cases.item_ids)
    return served_agreement(cases, tower, None, url, users=100, table=table)


def _summary(out: Path, timings: dict, latency: dict) -> dict:
    ev = json.loads((out / "eval" / "eval_movielens.json").read_text())
    bench = json.loads((out / "bench" / "bench.json").read_text())
    rows = ev["rows"]
    teacher = rows["teacher (PyTorch fp32)"]["metrics"]
    served = next(v for k, v in rows.items() if k.endswith("(ONNX int8_dynamic)"))
    levels = {lv["concurrency"]: lv for lv in bench["levels"]}
    c1, top = levels[min(levels)], levels[max(levels)]
    return {
        "quality": {
            "dataset": "movielens",
            "users": teacher["users"],
            "teacher_recall@10": teacher["recall@10"],
            "student_int8_recall@10": served["metrics"]["recall@10"],
            "kept_recall@10_pct": served["kept_vs_teacher"]["recall@10"],
            "kept_ndcg@10_pct": served["kept_vs_teacher"]["ndcg@10"],
            "distilled_before_finetune_recall@10": next(
                v["metrics"]["recall@10"] for k, v in rows.items() if k.startswith("distill/model")
            ),
            "popularity_recall@10": rows["popularity"]["metrics"]["recall@10"],
            "co_occurrence_recall@10": rows["co-occurrence"]["metrics"]["recall@10"],
            "sasrec_recall@10": rows["SASRec"]["metrics"]["recall@10"],
            "history_tower_recall@10": next(
                v["metrics"]["recall@10"] for k, v in rows.items() if k.startswith("history tower")
            ),
            "via_triton_agrees": ev.get("via_triton", {}).get("agree"),
        },
        "latency": {
            **latency,
            "speedup": round(latency["teacher_pytorch_ms"] / latency["student_int8_ms"], 1),
            "served_c1_p50_ms": c1["latency_ms"]["p50"],
            "served_c1_p99_ms": c1["latency_ms"]["p99"],
            f"served_c{top['concurrency']}_rps": top["throughput_rps"],
        },
        "timings_s": timings,
        "reports": {
            "distill": str(out / "distill" / "distill_report.json"),
            "finetune": str(out / "finetune" / "finetune_report.json"),
            "export": str(out / "export" / "export_report.json"),
            "eval": str(out / "eval" / "eval_movielens.md"),
            "bench": str(out / "bench" / "bench.json"),
        },
    }


def _print(s: dict) -> None:
    q, lat = s["quality"], s["latency"]
    took = sum(s["timings_s"].values())
    steps = ", ".join(f"{k} {v:.0f}" for k, v in s["timings_s"].items())
    hv = q["history_via_triton"]
    print(f"""
towerlite demo — summary
  quality kept   served student (ONNX int8) Recall@10 {q['student_int8_recall@10']:.4f} vs \
teacher {q['teacher_recall@10']:.4f} on {q['users']} held-out MovieLens users: \
{q['kept_recall@10_pct']}% of the teacher (NDCG@10 {q['kept_ndcg@10_pct']}%); distilled before \
fine-tuning {q['distilled_before_finetune_recall@10']:.4f}; popularity \
{q['popularity_recall@10']:.4f}, co-occurrence {q['co_occurrence_recall@10']:.4f}; \
through Triton = in-process: {q['via_triton_agrees']}
  history path   history tower (liked item ids → user vector, no tokenizer) Recall@10 \
{q['history_tower_recall@10']:.4f} vs SASRec {q['sasrec_recall@10']:.4f} \
(both {DEMO_EPOCHS} epochs); recommend_history through Triton = in-process: {hv['agree']} \
({hv['same_top10_share']:.0%} identical top-10 lists)
  latency won    user tower, batch 1, median of {lat['texts']} user texts: teacher PyTorch \
{lat['teacher_pytorch_ms']} ms → student int8 {lat['student_int8_ms']} ms \
({lat['speedup']}×); served recommend at concurrency 1: p50 {lat['served_c1_p50_ms']} ms, \
p99 {lat['served_c1_p99_ms']} ms
  took           {took:.0f} s ({steps})
  reports        {', '.join(s['reports'].values())}""")


def run(out: Path, main: Callable[[list[str]], int]) -> dict:
    """The chain under `out`; `main` runs one `towerlite` command line (the CLI passes its own,
    so this module does not import the CLI that imports it)."""
    from towerlite.serving.triton import start_server

    timings: dict[str, float] = {}
    started = time.monotonic()
    _step("prepare", ["prepare"], timings, main)
    _step("distill", ["distill", "--preset", "demo", "--out", str(out / "distill")], timings, main)
    _step(
        "finetune",
        [
            "finetune",
            "--preset",
            "demo",
            "--start",
            str(out / "distill" / "model"),
            "--out",
            str(out / "finetune"),
        ],
        timings,
        main,
    )
    _step(
        "export",
        [
            "export",
            "--model",
            str(out / "finetune" / "model"),
            "--out",
            str(out / "export"),
            "--variants",
            "fp32,int8_dynamic",
            "--no-speed",
        ],
        timings,
        main,
    )
    _step(
        "history",
        [
            "history",
            "--item-model",
            f"{out / 'export'}:int8_dynamic",
            "--set",
            f"epochs={DEMO_EPOCHS}",
            "--no-progress",
            "--out",
            str(out / "history"),
        ],
        timings,
        main,
    )
    _step(
        "deploy",
        [
            "deploy",
            "--user-model",
            str(out / "export"),
            "--catalog",
            "movielens",
            "--flavor",
            "portable",
            "--index",
            "exact",
            "--history-model",
            str(out / "history" / "model"),
            "--out",
            str(out / "repository"),
        ],
        timings,
        main,
    )
    _say("serve: starting Triton on the portable repository")
    with start_server(out / "repository" / "portable", log_path=out / "triton.log") as server:
        _say(f"serving at grpc {server.grpc_url}, http {server.http_url}")
        _step(
            "eval",
            [
                "eval",
                "--dataset",
                "movielens",
                "--users",
                "200",
                "--model",
                str(out / "distill" / "model"),
                "--model",
                str(out / "finetune" / "model"),
                "--model",
                f"{out / 'export'}:int8_dynamic",
                "--via-triton",
                server.grpc_url,
                "--history-model",
                str(out / "history" / "model"),
                "--sasrec-epochs",
                str(DEMO_EPOCHS),
                "--out",
                str(out / "eval"),
            ],
            timings,
            main,
        )
        _say("history path: recommend_history through Triton vs the same tower in-process")
        history_served = _history_via_triton(
            out / "history" / "model", out / "repository" / "portable", server.grpc_url
        )
        _step(
            "bench",
            [
                "bench",
                "serving",
                "--url",
                server.grpc_url,
                "--concurrency",
                "1,4,8",
                "--duration",
                "5",
                "--texts",
                "300",
                "--out",
                str(out / "bench"),
            ],
            timings,
            main,
        )
    _say("latency of the user tower in-process: teacher vs student, on held-out users' texts")
    from towerlite.evaluation.cases import build_cases

    t0 = time.monotonic()
    latency = _user_tower_latency(out / "export", build_cases("movielens", users=40).user_texts)
    timings["latency"] = round(time.monotonic() - t0, 1)
    summary = _summary(out, timings, latency)
    summary["quality"]["history_via_triton"] = history_served
    summary["total_s"] = round(time.monotonic() - started, 1)
    write_json_atomic(out / "demo_summary.json", summary)
    _print(summary)
    return summary
