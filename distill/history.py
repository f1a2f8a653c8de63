"""`towerlite history` (also `python -m towerlite.distill.history`, and under torchrun): train the
history user tower on the evaluation's training users, save it for deploy, and measure it
beside the yardsticks.

setup     the eval's cases (towerlite.evaluation.cases: held-out users are never read) and the item
          tower's embeddings of the catalog (cached per model)
train     towerlite.sequential_train.train, checkpointed after every epoch (a rerun resumes; under
          a constant rate a finished run rerun with more epochs trains on: HistoryConfig.resume_key)
save      OUT/model/: the ONNX sequence model and the arrays deploy builds the item table from
evaluate  the saved tower through its ONNX graph (as served), with --parts the text-only and
          ID-only (SASRec) settings trained the same way, popularity and co-occurrence: Recall@10,
          NDCG@10 with 95% bootstrap intervals, all users and the cold-start slice
variants  the graph as int8 and fp16 (distill/history_variants.py): OUT/model-VARIANT where its
          top-10 agrees with fp32's (the gate), measured beside it
report    OUT/history_report.json and .md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.evaluation.report import paired_cell
from towerlite.sequential import LR_SCHEDULES, PRECISIONS, HistoryConfig

from .history_variants import VARIANTS

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Train the history user tower: a user's liked items (catalog ids, oldest → newest) → a user "
    "vector, each item its item-tower text embedding (whitened, adapted) plus a learned ID vector "
    "when it has enough training likes, read by a small causal transformer (SASRec-style), "
    "cross-entropy over the catalog (full softmax, or sampled with negatives=N; within each "
    "dataset's items with --dataset both). Trains on the eval's training users only (the "
    "held-out 10% are never read); checkpoints every epoch (a rerun resumes; rerun with a "
    "larger --set epochs=N, a finished run trains on). Writes OUT/model/ "
    "(`towerlite deploy --history-model OUT/model` serves it as `recommend_history`) and "
    "OUT/history_report.json/.md: the tower through its ONNX graph beside popularity, "
    "co-occurrence, the history's zero-shot text mean and, with --parts, text-only and ID-only "
    "(SASRec) settings, each with its paired difference from the tower.")

CHECKPOINTS = "checkpoints"
# the zero-shot row beside the tower (towerlite.evaluation.sequential.text_mean)
TEXT_MEAN = "history text mean (zero-shot, no training)"


DATASETS = {"movielens": ("movielens",), "bookcrossing": ("bookcrossing",),
            "both": ("movielens", "bookcrossing")}


@dataclass
class HistoryRun:
    """One run's state, setup → train → evaluate → report. `dataset` "both": one tower over
    both catalogs (MovieLens' rows first), trained on both datasets' training users, evaluated
    on each dataset's cases over its own catalog (what the DOMAIN filter serves)."""

    dataset: str
    item_model: str
    out: Path
    cfg: HistoryConfig
    catalog_items: dict = field(default_factory=dict)  # per dataset; 0 or absent: whole
    # train over each dataset's whole catalog (every training history complete), evaluate over
    # catalog_items all the same: a sampled catalog keeps every evaluated user's items but
    # only the training users' items that fall into it, mostly the popular ones
    train_whole: bool = False
    parts: bool = False
    cold_max: int = 2
    progress: bool = True
    variants: tuple = ()
    evaluated: list = field(default_factory=list)  # (Cases, text embeddings or None) per dataset
    # with train_whole: the same held-out users over each whole catalog, (Cases, text): what a
    # deploy of every item ranks (a sampled catalog spares the targets most of their rivals)
    whole: list = field(default_factory=list)
    item_ids: list = field(default_factory=list)  # the training catalog, datasets in turn
    domains: list = field(default_factory=list)  # each dataset's [start, stop) in it
    sequences: list = field(default_factory=list)
    text: object = None
    rows: dict = field(default_factory=dict)
    recall: dict = field(default_factory=dict)  # each row's per-user Recall@10, for pairing
    timings: dict = field(default_factory=dict)

    def setup(self) -> None:
        import numpy as np

        from towerlite.evaluation.cases import build_cases
        from towerlite.evaluation.towers import towers_of

        t0 = time.perf_counter()
        tower = towers_of(self.item_model)[0] if self.cfg.use_text else None
        texts = []
        for name in DATASETS[self.dataset]:
            cases = build_cases(name, users=0, max_history=10,
                                catalog_items=self.catalog_items.get(name, 0))
            text = tower.embed(cases.item_texts, f"{name} catalog") if tower else None
            self.evaluated.append((cases, text))
            if self.train_whole and not cases.settings["catalog_full"]:
                # the same held-out users (none of them read), every training like kept
                cases = build_cases(name, users=0, max_history=10, catalog_items=0)
                text = tower.embed(cases.item_texts, f"{name} whole catalog") if tower else None
                self.whole.append((cases, text))
            offset = len(self.item_ids)
            self.sequences += [[offset + r for r in s] for s in cases.train_sequences]
            self.item_ids += cases.item_ids
            self.domains.append((offset, len(self.item_ids)))
            texts.append(text)
            log.info("%s: %d training users over %d items, %d held-out users evaluated over %d",
                     name, len(cases.train_sequences), len(cases.item_ids),
                     len(self.evaluated[-1][0].users), len(self.evaluated[-1][0].item_ids))
        if tower:
            self.text = np.concatenate(texts)
        self.timings["setup_s"] = round(time.perf_counter() - t0, 1)

    def checkpoint(self) -> Path:
        sizes = [self.catalog_items.get(n, 0) for n in DATASETS[self.dataset]]
        key = json.dumps([self.cfg.resume_key(), self.dataset, self.item_model, sizes,
                          len(self.item_ids)] + (["whole"] if self.train_whole else []),
                         sort_keys=True)
        folder = self.out / CHECKPOINTS
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"

    def train(self, dist=None):
        from towerlite.evaluation.sequential import validation
        from towerlite.sequential_train import train

        t0 = time.perf_counter()
        domains = self.domains if len(self.domains) > 1 else None
        sequences, validator = validation(self.cfg, self.sequences, domains, self.cold_max)
        model, state = train(self.cfg, sequences, len(self.item_ids), self.text,
                             checkpoint=self.checkpoint(), progress=self.progress,
                             dist=dist, domains=domains, validator=validator)
        self.timings["train_s"] = round(time.perf_counter() - t0, 1)
        return model, state

    def save(self, model, state) -> Path:
        from towerlite.sequential import probe_histories, save

        about = {"dataset": self.dataset, "training_users": len(self.sequences),
                 "catalog_items": len(self.item_ids), "trained_on_whole_catalog": self.train_whole,
                 "epochs": state.epoch, **state.record(),
                 "train_seconds": round(state.seconds, 1)}
        return save(self.out / "model", model, self.cfg, self.item_ids, self.item_model, about,
                    probe_histories(self.sequences, self.item_ids, self.cfg.max_len))

    def label(self, cases, row: str) -> str:
        where = f"{cases.dataset}: " if len(self.evaluated) > 1 else ""
        if any(cases is c for c, _ in self.whole):
            where += f"whole catalog ({len(cases.item_ids):,} items): "
        return where + row

    def add(self, cases, label: str, scores, about, tower: str | None = None) -> None:
        """A row of the report. `tower`: the label of the tower row on these cases, beside
        which this row's per-user Recall@10 is compared (paired, all users and cold ones)."""
        from towerlite.evaluation.metrics import summarize, tower_minus_row
        from towerlite.evaluation.recommend import user_metrics

        values, cold = user_metrics(cases, scores), cases.target_counts <= self.cold_max
        label = self.label(cases, label)
        self.rows[label] = {**about, "metrics": summarize(values),
                            "cold_start": summarize(values, cold)}
        self.recall[label] = values["recall@10"]
        if tower is not None:
            tower = self.label(cases, tower)
            self.rows[label]["tower_minus_this_recall@10"] = tower_minus_row(
                self.recall[tower], values["recall@10"], cold)
        log.info("%s: Recall@10 %s (cold %s)", label, self.rows[label]["metrics"]["recall@10"],
                 self.rows[label]["cold_start"]["recall@10"])

    def evaluate(self, folder: Path) -> None:
        from towerlite.evaluation.baselines import BASELINES
        from towerlite.evaluation.sequential import saved, text_mean, trained
        from towerlite.sequential import SavedTower

        tower = SavedTower.load(folder)
        served = f"history tower, {self.cfg.kind} (ONNX, as served)"
        for cases, text in self.evaluated + self.whole:
            self.add(cases, served, *saved(cases, tower, text))
            if self.parts:
                for use_text, use_ids in ((True, False), (False, True)):
                    cfg = replace(self.cfg, use_text=use_text, use_ids=use_ids,
                                  id_min_likes=self.cfg.id_min_likes if use_text else 1)
                    self.add(cases, f"history tower, {cfg.kind}",
                             *trained(cases, cfg, text if use_text else None, self.progress),
                             tower=served)
            if text is not None:
                self.add(cases, TEXT_MEAN, text_mean(cases, text, self.cfg.max_len),
                         {"model": TEXT_MEAN}, tower=served)
            for name, build in BASELINES.items():
                self.add(cases, name, build(cases), {"model": name}, tower=served)
        self.graph_variants(folder)

    def graph_variants(self, folder: Path) -> None:
        """Each of --variants written beside OUT/model, compared with it on every dataset;
        removed again (and reported) when its top-10 falls under the gate on any."""
        import shutil

        from towerlite.evaluation.sequential import saved
        from towerlite.sequential import SavedTower

        from . import history_variants

        reference = SavedTower.load(folder)
        for variant in self.variants:
            written = history_variants.write(folder, variant)
            tower = SavedTower.load(written)
            passed = True
            for cases, text in self.evaluated:
                measured = history_variants.compare(cases, reference, tower, text)
                label = f"history tower, {self.cfg.kind}, {variant} graph"
                self.add(cases, label, *saved(cases, tower, text))
                self.rows[self.label(cases, label)]["graph_variant"] = measured
                passed = passed and measured["gate"]["passed"]
                log.info("%s: top-10 overlap with fp32 %.3f on %s", variant,
                         measured["top10_overlap"], cases.dataset)
            if not passed:
                shutil.rmtree(written)
            log.info("%s: %s", variant, f"written to {written}" if passed else "under the gate")

    def report(self) -> dict:
        from importlib.metadata import version

        import numpy as np

        from towerlite.files import write_json_atomic, write_text_atomic
        from towerlite.machine import cpu_info

        cold = {c.dataset: int(np.sum(c.target_counts <= self.cold_max))
                for c, _ in self.evaluated}
        settings = {c.dataset: c.settings for c, _ in self.evaluated}
        one = len(self.evaluated) == 1
        report = {"dataset": self.dataset, "item_model": self.item_model,
                  "config": asdict(self.cfg),
                  # one dataset: its settings and cold-start users; both: a dict of each, by name
                  "cases": next(iter(settings.values())) if one else settings,
                  "cold_start_max_other_likes": self.cold_max,
                  "cold_start_users": next(iter(cold.values())) if one else cold,
                  "training_users": len(self.sequences),
                  "training_catalog_items": len(self.item_ids),
                  "trained_on_whole_catalog": self.train_whole, "rows": self.rows,
                  "timings": self.timings, "machine": cpu_info(),
                  "versions": {p: version(p) for p in ("torch", "onnxruntime", "numpy")}}
        write_json_atomic(self.out / "history_report.json", report)
        write_text_atomic(self.out / "history_report.md", markdown(report) + "\n")
        return report


def _with_ci(metrics: dict, name: str) -> str:
    if metrics.get(name) is None:
        return "-"
    low, high = metrics[name + "_ci95"]
    return f"{metrics[name]:.4f} [{low:.4f}, {high:.4f}]"


def markdown(report: dict) -> str:
    cases, cold = report["cases"], report["cold_start_users"]
    if isinstance(cold, dict):  # both datasets: each one's settings by name
        about = "; ".join(f"{name} {c['users']:,} held-out users over its {c['catalog_items']:,} "
                          f"items ({cold[name]} cold)" for name, c in cases.items())
        cold = "see above"
    else:
        about = f"{cases['users']:,} held-out users, {cases['catalog_items']:,} items"
        cold = f"{cold} users"
    if report.get("trained_on_whole_catalog"):
        about += f"; trained over the whole catalog ({report['training_catalog_items']:,} items)"
    lines = [f"### {report['dataset']}: {about}, leave-last-out; history tower over "
             f"{report['item_model']}", "",
             f"| row | Recall@10 [95% CI] | NDCG@10 [95% CI] | Recall@50 | cold-start R@10 "
             f"({cold}) | tower − row, R@10: all / cold (paired 95% CI) |",
             "|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        metrics, cold = row["metrics"], row["cold_start"]
        lines.append(f"| {name} | {_with_ci(metrics, 'recall@10')} | "
                     f"{_with_ci(metrics, 'ndcg@10')} | {metrics['recall@50']:.4f} | "
                     f"{_with_ci(cold, 'recall@10')} | {paired_cell(row)} |")
    variants = {n: r["graph_variant"] for n, r in report["rows"].items() if "graph_variant" in r}
    if variants:
        lengths = list(next(iter(variants.values()))["latency_batch1_1thread"])
        lines += ["", "| graph | top-10 overlap with fp32 | identical top-10 | "
                  + " | ".join(f"ms p50 / p99, {n.replace('_', ' ')} items" for n in lengths)
                  + " | gate |", "|---|---|---|" + "---|" * len(lengths) + "---|"]
        first = next(iter(variants.values()))["reference_latency_batch1_1thread"]
        lines.append("| fp32 | 1 | 1 | " + " | ".join(
            f"{first[n]['p50_ms']:.3f} / {first[n]['p99_ms']:.3f}" for n in lengths) + " | — |")
        for name, v in variants.items():
            lat = v["latency_batch1_1thread"]
            lines.append(f"| {name.rsplit(', ', 1)[-1].removesuffix(' graph')} | "
                         f"{v['top10_overlap']:.4f} | "
                         f"{v['identical_top10']:.4f} | " + " | ".join(
                             f"{lat[n]['p50_ms']:.3f} / {lat[n]['p99_ms']:.3f}" for n in lengths)
                         + f" | {'passed' if v['gate']['passed'] else 'failed: not written'} |")
    return "\n".join(lines)



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="movielens", choices=list(DATASETS),
                   help="both: one tower over both catalogs, trained on both datasets' training "
                        "users, evaluated on each")
    p.add_argument("--item-model", default="student-start", metavar="SPEC",
                   help="the item tower whose embeddings the tower reads: the export you deploy "
                        "(FOLDER:VARIANT, e.g. runs/export/student:int8_dynamic), a Hugging Face "
                        "folder, or student-start (default)")
    p.add_argument("--catalog-items", type=int, default=None,
                   help="candidate catalog size (0 = whole; default whole for movielens, 20,000 "
                        "sampled for bookcrossing)")
    p.add_argument("--train-catalog", default="eval", choices=["eval", "whole"],
                   help="train over the candidate catalog (eval, default) or the dataset's whole "
                        "one (whole: every training user's history complete, where a sampled "
                        "catalog keeps mostly their popular items; evaluated over the candidate "
                        "catalog all the same; Book-Crossing's 271k books want --set negatives=N)")
    p.add_argument("--parts", action="store_true",
                   help="also train and measure the text-only and ID-only (SASRec) settings")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--text-only", action="store_true", help="train the text-only setting")
    only.add_argument("--ids-only", action="store_true",
                      help="train the ID-only setting (SASRec: every item with a training like "
                           "gets an ID vector, no text), saved and served like the others")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="a HistoryConfig field (dim, layers, heads, max_len, dropout, "
                        "id_min_likes, epochs, batch_size, lr, lr_schedule (constant, cosine), "
                        "precision (fp32, bf16), "
                        "weight_decay, negatives, text_skip, skip_gain, logit_adjust, "
                        "id_dropout, validation, patience, cold_floor, validation_users, "
                        "bucket_by_length, seed)")
    p.add_argument("--variants", default=",".join(VARIANTS), metavar="LIST",
                   help=f"graph variants to write beside OUT/model where their top-10 agrees "
                        f"with fp32's ({', '.join(VARIANTS)}; default both; '' none)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/history"))


def config_of(args) -> HistoryConfig:
    cfg = HistoryConfig(use_ids=not args.text_only)
    if getattr(args, "ids_only", False):
        cfg = replace(cfg, use_text=False, id_min_likes=1)  # as the eval's SASRec row
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not hasattr(cfg, name) or name in ("use_text", "use_ids"):
            raise TowerliteError(f"--set {item!r}: not FIELD=VALUE with a HistoryConfig field")
        kind = type(getattr(cfg, name))
        try:
            parsed = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
        except ValueError:
            wanted = {int: "an integer", float: "a number"}.get(kind, kind.__name__)
            raise TowerliteError(f"--set {item!r}: {name} takes {wanted}, not {value!r}") from None
        cfg = replace(cfg, **{name: parsed})
    if cfg.dim % cfg.heads or cfg.dim < 1 or cfg.max_len < 1 or cfg.epochs < 1:
        raise TowerliteError("dim must be a multiple of heads; dim, max_len, epochs at least 1")
    if cfg.text_skip and not cfg.use_text:
        raise TowerliteError("text_skip appends the items' text embeddings: not with --ids-only")
    if cfg.skip_gain < 0 or (cfg.skip_gain and not cfg.text_skip):
        raise TowerliteError("skip_gain fixes the text skip's gain: a number ≥ 0, with "
                             "text_skip=true")
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise TowerliteError(f"lr_schedule is one of {', '.join(LR_SCHEDULES)}, not "
                             f"{cfg.lr_schedule!r}")
    if cfg.precision not in PRECISIONS:
        raise TowerliteError(f"precision is one of {', '.join(PRECISIONS)}, not "
                             f"{cfg.precision!r}")
    if cfg.logit_adjust < 0 or not 0 <= cfg.id_dropout < 1:
        raise TowerliteError("logit_adjust is a number ≥ 0; id_dropout a share in [0, 1)")
    if not 0 <= cfg.validation < 1 or cfg.patience < 0 \
            or ((cfg.patience or cfg.cold_floor or cfg.validation_users) and not cfg.validation):
        raise TowerliteError("validation is a share in [0, 1); patience a count ≥ 0, cold_floor "
                             "and validation_users with validation > 0")
    return cfg


def command(args: argparse.Namespace) -> int:
    from towerlite.files import ensure_writable_dir

    from .train import first_rank_logs, init_distributed

    ensure_writable_dir(args.out, "history output folder")
    sizes = {name: args.catalog_items if args.catalog_items is not None else
             (20_000 if name == "bookcrossing" else 0) for name in DATASETS[args.dataset]}
    whole = args.train_catalog == "whole"
    cfg = config_of(args)
    if args.dataset == "both" and (args.parts or cfg.negatives or whole):
        raise TowerliteError("--parts, negatives=N and --train-catalog whole train on one "
                             "dataset: not with --dataset both")
    if whole and args.parts:
        raise TowerliteError("--parts trains its settings over the candidate catalog: not with "
                             "--train-catalog whole")
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise TowerliteError(f"--variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    run = HistoryRun(args.dataset, args.item_model, args.out, cfg, sizes, whole,
                     args.parts, progress=not args.no_progress, variants=variants)
    started = time.perf_counter()
    # under torchrun every process trains on its share of each batch; the first one alone
    # saves, evaluates and reports
    dist = init_distributed()
    with first_rank_logs(dist):
        run.setup()
        model, state = run.train(dist)
    dist.close()
    if dist.rank != 0:
        return 0
    run.timings["world_size"] = dist.world
    folder = run.save(model, state)
    run.evaluate(folder)
    run.timings["total_s"] = round(time.perf_counter() - started, 1)
    run.report()
    print(markdown(json.loads((args.out / "history_report.json").read_text())))
    print(f"\nhistory tower: {folder} (deploy --history-model {folder}); report: "
          f"{args.out / 'history_report.json'}")
    return 0


if __name__ == "__main__":
    from towerlite.entry import standalone

    sys.exit(standalone("python -m towerlite.distill.history", DESCRIPTION, add_arguments, command))
