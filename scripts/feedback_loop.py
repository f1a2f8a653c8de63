"""The feedback loop measured on MovieLens-1M's own later data (issue 20): serve a history tower
trained on the likes before a cut date T, fold in the ratings of the weeks after T as a feedback
file (`towerlite fold-in`'s code path), and compare, on every returning user's first like after
T+Δ and (a second, larger set) one random like after T+Δ of every user who has one:

    old        the tower trained on likes before T (what was serving)
    folded     old, fine-tuned on the feedback between T and T+Δ plus a replay sample
    retrain    a tower trained from scratch on every like before T+Δ
    popularity, co-occurrence   learnt from the likes before T+Δ (the yardsticks)
    SASRec     the ID-only yardstick, trained like retrain on the likes before T+Δ

Held-out users (towerlite.data.splits) are never trained on; their feedback rows are dropped by
fold-in. Cold slice: targets with at most 2 training likes before T (new since T). Prints a
table and writes OUT/loop_report.json (and --json elsewhere). Long: two full trainings.

    .venv/bin/python scripts/feedback_loop.py --out runs/loop --json docs/img/feedback-loop.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def timed_train(cfg, seqs, n_items, text, checkpoint):
    from towerlite.sequential_train import train

    t0, cpu0 = time.perf_counter(), time.process_time()
    model, state = train(cfg, [s for s in seqs if len(s) >= 2], n_items, text,
                         checkpoint=checkpoint)
    return model, state, {"train_s": round(time.perf_counter() - t0, 1),
                          "train_cpu_s": round(time.process_time() - cpu0, 1),
                          "sequences": len(seqs), "likes": int(sum(map(len, seqs)))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/loop"))
    p.add_argument("--json", type=Path, help="also write the report here")
    p.add_argument("--cut", default="2000-12-01", help="T (UTC date; default the 80th percentile "
                                                       "of MovieLens-1M's likes)")
    p.add_argument("--weeks", type=int, default=4, help="Δ: weeks of feedback folded in")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--fold-epochs", type=int, default=5)
    p.add_argument("--replay", type=float, default=1.0)
    p.add_argument("--item-model", default="student-start")
    args = p.parse_args()

    from towerlite.data import load_dataset
    from towerlite.data.catalog import prepare_items
    from towerlite.data.splits import is_heldout_user
    from towerlite.distill.fold_in import FoldIn, dataset_likes, sequences, training_only
    from towerlite.entry import setup_logging
    from towerlite.evaluation.baselines import BASELINES
    from towerlite.evaluation.cases import Cases
    from towerlite.evaluation.metrics import paired_difference, per_user, summarize, target_ranks
    from towerlite.evaluation.sequential import SASREC, saved, trained
    from towerlite.evaluation.towers import towers_of
    from towerlite.sequential import HistoryConfig, SavedTower, save

    setup_logging()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cut = int(datetime.fromisoformat(args.cut).replace(tzinfo=timezone.utc).timestamp())
    until = cut + args.weeks * 7 * 86_400
    data = load_dataset("movielens")
    catalog = prepare_items(data.items)
    item_ids, texts = list(catalog["item_id"]), list(catalog["text"])
    row_of = {item: r for r, item in enumerate(item_ids)}
    (tower,) = towers_of(args.item_model)[:1]
    text = tower.embed(texts, "movielens catalog")
    likes, _ = dataset_likes("movielens")
    train_likes, _ = training_only(likes)
    cfg = HistoryConfig(max_len=args.max_len, epochs=args.epochs, batch_size=args.batch_size)
    record = {"cut": args.cut, "weeks": args.weeks, "config": cfg.__dict__,
              "fold_epochs": args.fold_epochs, "replay": args.replay,
              "item_model": args.item_model, "rows": {}}

    def about(before):
        return {"dataset": "movielens", "likes_before": before}

    # the release that was serving: likes before T
    before_t = sequences(train_likes[train_likes["timestamp"] < cut], row_of)
    model, state, record["old"] = timed_train(cfg, list(before_t.values()), len(item_ids), text,
                                              out / "old.pt")
    old = save(out / "old" / "model", model, cfg, item_ids, args.item_model, about(cut))

    # the feedback file: every rating between T and T+Δ, as users made them (all users: fold-in
    # drops the held-out ones)
    inter = data.interactions
    window = inter[(inter["timestamp"] >= cut) & (inter["timestamp"] < until)]
    feedback = out / "feedback.csv"
    window.assign(event="rating")[["user_id", "item_id", "event", "rating", "timestamp"]] \
        .to_csv(feedback, index=False)
    record["feedback_rows"] = len(window)

    run = FoldIn(old, feedback, out / "folded", args.fold_epochs, args.replay, progress=True)
    run.setup()
    folded_model, folded_cfg = run.train()
    folded = run.save(folded_model, folded_cfg)
    record["folded"] = run.report()

    # the full retrain: every like before T+Δ
    before_u = sequences(train_likes[train_likes["timestamp"] < until], row_of)
    model, state, record["retrain"] = timed_train(cfg, list(before_u.values()), len(item_ids),
                                                  text, out / "retrain.pt")
    retrain = save(out / "retrain" / "model", model, cfg, item_ids, args.item_model,
                   about(until))

    # the cases, two sets scored together (each model trains once): "first", each returning
    # user's first like after T+Δ; "later", one like drawn at random (seeded) among each user's
    # likes after T+Δ that follow another like — users who joined after T+Δ included, several
    # times the cases, so narrower intervals. Each read with every like before it.
    rng = np.random.default_rng(0)
    users, seen, targets, kinds = [], [], [], []
    for user, group in likes.groupby("user_id", sort=True):
        after = [i for n, i in enumerate(group.index) if n and group.at[i, "timestamp"] >= until]
        first = group.index[group["timestamp"] >= until]
        picks = ([("first", first[0])] if len(first) and first[0] != group.index[0] else []) \
            + ([("later", after[rng.integers(len(after))])] if after else [])
        for kind, at in picks:
            users.append(user)
            seen.append([row_of[i] for i in group["item_id"][group.index < at]])
            targets.append(row_of[group.at[at, "item_id"]])
            kinds.append(kind)
    counts_t = np.bincount([r for s in before_t.values() for r in s], minlength=len(item_ids))
    targets, kinds = np.asarray(targets), np.asarray(kinds)
    cases = Cases(dataset="movielens", domain="movie", item_ids=item_ids, item_texts=texts,
                  users=users, histories=[s[-10:] for s in seen], seen=seen, targets=targets,
                  user_texts=[], train_likes=[s for s in before_u.values()],
                  target_counts=counts_t[targets])
    cold = cases.target_counts <= 2
    sets = {"first": kinds == "first", "later": kinds == "later"}
    record["cases"] = {kind: {"users": int(m.sum()), "cold_targets": int((cold & m).sum()),
                              "held_out_users": int(sum(is_heldout_user(u) for u, k in
                                                        zip(users, m) if k))}
                       for kind, m in sets.items()}
    record["rows_later"] = {}
    recall: dict[str, np.ndarray] = {}  # per case, for the paired differences

    def add(name, scores):
        above, tied = target_ranks(scores, cases.targets, cases.seen)
        values = per_user(above, tied, ks=(10, 50), ndcg_k=10)
        recall[name] = values["recall@10"]
        for kind, m in sets.items():
            record["rows" if kind == "first" else "rows_later"][name] = {
                "metrics": summarize(values, m), "cold_start": summarize(values, m & cold)}

    for name, folder in (("old (before T)", old), ("folded (old + feedback)", folded),
                         ("retrain (before T+Δ)", retrain)):
        add(name, saved(cases, SavedTower.load(folder), text)[0])
    for name, build in BASELINES.items():
        add(name, build(cases))
    # the ID-based yardstick: SASRec (the tower without text) trained the same way on the same
    # likes before T+Δ
    cases.train_sequences = [s for s in before_u.values() if len(s) >= 2]
    t0 = time.process_time()
    scores, _ = trained(cases, replace(SASREC, epochs=args.epochs, max_len=args.max_len,
                                       batch_size=args.batch_size))
    record["sasrec_cpu_s"] = round(time.process_time() - t0, 1)
    add("SASRec (ID only, before T+Δ)", scores)

    def ci(m, k):
        low, high = m[k + "_ci95"]
        return f"{m[k]:.4f} [{low:.4f}, {high:.4f}]"

    cpu = {"old (before T)": record["old"]["train_cpu_s"],
           "folded (old + feedback)": record["folded"]["train_cpu_s"],
           "retrain (before T+Δ)": record["retrain"]["train_cpu_s"],
           "SASRec (ID only, before T+Δ)": record["sasrec_cpu_s"]}
    # "beats": the same cases scored by both, so the interval of the per-case difference is
    # the test (two overlapping marginal intervals can still hide a sure difference)
    pairs = (("folded (old + feedback)", "old (before T)"),
             ("retrain (before T+Δ)", "folded (old + feedback)"),
             ("retrain (before T+Δ)", "old (before T)"))
    record["paired_recall@10"] = {
        kind: {f"{a} − {b}": paired_difference(recall[a], recall[b], m) for a, b in pairs}
        for kind, m in sets.items()}
    lines = []
    for kind, key, what in (("first", "rows", "users' first like after T+Δ"),
                            ("later", "rows_later", "users' random like after T+Δ")):
        n = record["cases"][kind]
        lines += [f"MovieLens-1M, T = {args.cut}, Δ = {args.weeks} weeks: {n['users']:,} {what} "
                  f"({n['cold_targets']} cold targets)", "",
                  "| row | Recall@10 [95% CI] | NDCG@10 [95% CI] | cold R@10 | train CPU s |",
                  "|---|---|---|---|---|"]
        for name, row in record[key].items():
            lines.append(f"| {name} | {ci(row['metrics'], 'recall@10')} | "
                         f"{ci(row['metrics'], 'ndcg@10')} | "
                         f"{row['cold_start']['recall@10'] or 0:.4f} | {cpu.get(name, '-')} |")
        lines += ["", "Paired Recall@10 differences [95% CI]:"]
        lines += [f"  {pair}: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"
                  for pair, d in record["paired_recall@10"][kind].items()]
        lines.append("")
    print("\n".join(lines))
    record["table"] = lines
    record["date"] = datetime.now(timezone.utc).date().isoformat()
    (out / "loop_report.json").write_text(json.dumps(record, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
