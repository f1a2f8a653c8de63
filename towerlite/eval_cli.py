"""`towerlite eval`: the evaluation package's rows, and with `--via-triton` the same rankings
through a running server (so it sits with the application: it reaches evaluation and serving)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.sequential import HistoryConfig

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Next-item retrieval quality of text two-towers on real interactions, beside popularity and "
    "item-to-item co-occurrence. Per held-out user (10% of users, never trained on): the last "
    "liked item is the target (time order on MovieLens, seeded shuffle on Book-Crossing), the up "
    "to --history liked items before it render the user text, the candidates are the domain's "
    "catalog minus what the user liked before. Rows: the teacher and the student start (PyTorch), "
    "every --model (a Hugging Face folder in PyTorch, an export folder's ONNX variants), items by "
    "the teacher with users by each model in the teacher's space, every --history-model, and the "
    "baselines (popularity, co-occurrence, and SASRec trained on the training users); "
    "Recall@10/50, NDCG@10, MRR with 95%% bootstrap intervals, a cold-start slice, and each "
    "metric as a share of the teacher's. Embeddings are cached per model under "
    "$TOWERLITE_HOME/embedding-cache. Writes OUT/eval_DATASET.json and .md.")

# Book-Crossing's 271k books take the teacher ≈ 4 h on 2 CPU cores: a sampled catalog by default.
AUTO_CATALOG = {"movielens": 0, "bookcrossing": 20_000}
SASREC_EPOCHS = HistoryConfig.epochs  # the yardstick trains as long as the history tower


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, choices=["movielens", "bookcrossing", "both"])
    p.add_argument("--model", action="append", default=[], metavar="SPEC",
                   help="a tower to evaluate (repeatable): a Hugging Face folder, an export folder "
                        "(all its ONNX variants) or FOLDER:VARIANT")
    p.add_argument("--no-teacher", action="store_true",
                   help="leave out the teacher row (and asymmetric rows)")
    p.add_argument("--no-start", action="store_true", help="leave out the student-start row")
    p.add_argument("--no-baselines", action="store_true",
                   help="leave out popularity, co-occurrence and SASRec")
    p.add_argument("--sasrec-epochs", type=int, default=SASREC_EPOCHS,
                   help="epochs of the ID-based SASRec yardstick, trained on the training users "
                        f"as the history tower is (default {SASREC_EPOCHS}, ≈ 30 min on MovieLens "
                        "on 2 cores; 0 = leave it out)")
    p.add_argument("--history-model", action="append", default=[], type=Path, metavar="FOLDER",
                   help="a `towerlite history` tower to rank (repeatable), through its ONNX graph")
    p.add_argument("--users", type=int, default=1000,
                   help="held-out users to sample (default 1000; 0 = all of them)")
    p.add_argument("--history", type=int, default=10,
                   help="liked items rendered into a user text (default 10)")
    p.add_argument("--catalog-items", type=int, default=None,
                   help="candidate catalog size: 0 = the whole catalog (default: whole for "
                        "movielens, 20,000 sampled for bookcrossing, whose 271k books take the "
                        "teacher hours on a CPU)")
    p.add_argument("--cold-max", type=int, default=2,
                   help="cold-start slice: targets liked by at most this many other users "
                        "(default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--via-triton", metavar="URL",
                   help="also run the users through the served `recommend` ensemble at URL and "
                        "check it against the in-process row of the first ONNX --model")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--out", type=Path, default=Path("runs/eval"),
                   help="report folder (default runs/eval)")


def _towers(args) -> list:
    from towerlite.evaluation.towers import towers_of

    specs = (([] if args.no_teacher else ["teacher"])
             + ([] if args.no_start else ["student-start"]) + args.model)
    towers = [tower for spec in specs for tower in towers_of(spec)]
    labels = [(tower.name, tower.runtime) for tower in towers]
    for tower in towers:  # two folders named alike (e.g. runs/a/model, runs/b/model): the parent

        if labels.count((tower.name, tower.runtime)) > 1:
            tower.name = f"{Path(tower.path).parent.name}/{tower.name}"
    if not towers and args.no_baselines and not args.history_model:
        raise TowerliteError("nothing to evaluate: no towers and --no-baselines")
    if args.via_triton and not any(tower.runtime.startswith("ONNX") for tower in towers):
        raise TowerliteError("--via-triton compares with an ONNX tower: give the served export "
                             "with --model")
    return towers


def run_dataset(dataset: str, towers: list, args) -> dict:
    from importlib.metadata import version

    from towerlite.evaluation.cases import build_cases
    from towerlite.evaluation.recommend import evaluate
    from towerlite.evaluation.report import markdown
    from towerlite.files import write_json_atomic, write_text_atomic
    from towerlite.machine import cpu_info
    from towerlite.serving.served_quality import compare

    started = time.monotonic()
    size = AUTO_CATALOG[dataset] if args.catalog_items is None else args.catalog_items
    cases = build_cases(dataset, args.users, args.history, args.seed, size)
    log.info(f"{dataset}: {len(cases.users):,} users, {len(cases.item_ids):,} candidate items")
    from towerlite.sequential import SavedTower

    histories = [SavedTower.load(folder) for folder in args.history_model]
    report = evaluate(cases, towers, not args.no_baselines, args.cold_max,
                      sasrec_epochs=max(0, args.sasrec_epochs), history_towers=histories)
    if args.via_triton:
        onnx = next(tower for tower in towers if tower.runtime.startswith("ONNX"))
        report["via_triton"] = compare(cases, onnx, args.via_triton, args.protocol)
    report["models"] = {f"{tower.name} ({tower.runtime})": tower.path for tower in towers}
    report["seconds"] = round(time.monotonic() - started, 1)
    report["versions"] = {p: version(p) for p in ("torch", "onnxruntime", "numpy", "scipy")}
    report["machine"] = cpu_info()
    write_json_atomic(args.out / f"eval_{dataset}.json", report)
    write_text_atomic(args.out / f"eval_{dataset}.md", markdown(report) + "\n")
    return report


def command(args: argparse.Namespace) -> int:
    from towerlite.evaluation.report import markdown
    from towerlite.files import ensure_writable_dir

    ensure_writable_dir(args.out, "eval output folder")
    towers = _towers(args)
    datasets = ["movielens", "bookcrossing"] if args.dataset == "both" else [args.dataset]
    for dataset in datasets:
        report = run_dataset(dataset, towers, args)

        print(markdown(report) + "\n")
        print(f"report: {args.out / f'eval_{dataset}.json'}\n")
        if report.get("via_triton") and not report["via_triton"]["agree"]:
            return 1
    return 0
