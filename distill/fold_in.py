"""`towerlite fold-in` (also `python -m towerlite.distill.fold_in`): new feedback → the history
user tower fine-tuned from the one it serves, ready for `towerlite release --history-model`.

setup     the tower folder (its settings, catalog, weights.pt: a served release's
          history_encoder/R/history/ is one), the feedback file (towerlite.data.feedback: checked
          whole before anything trains), the interactions the tower learnt from (its dataset's
          training users, likes before its cut, plus feedback it folded in before), and the item
          tower's embeddings of the catalog (cached)
train     towerlite.sequential_train.train from the tower's weights, for a few epochs, on
          each user with new likes (old likes, then the new ones, in time order) and a replay
          sample of the other users' sequences (REPLAY × as many: so it does not forget them);
          an item with enough likes in old + new gets its ID vector
save      OUT/model/: a tower folder, its report recording what it has learnt from
report    OUT/fold_in_report.json: what was read, dropped, trained, and the CPU time it took

Split discipline as everywhere: a held-out user's feedback (towerlite.data.splits) is never
trained on — it is dropped and counted. Users unknown to the dataset are new users: their likes
train like anyone's (the tower has no per-user parameters). Items must be in the tower's
catalog (a clear error otherwise: nothing is written).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.errors import TowerliteError

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Fine-tune the history user tower on new feedback: from the tower's own weights (a "
    "`towerlite history` or earlier fold-in output, or a served release's "
    "history_encoder/R/history folder), on the users with new likes plus a replay sample of the "
    "interactions it learnt from, for a few epochs. The feedback file is CSV or JSON Lines with "
    "user_id, item_id, event (like|rating|click|skip), rating, timestamp (Unix seconds or ISO "
    "8601); held-out users' rows are dropped. Writes OUT/model (serve it with `towerlite "
    "release --history-model OUT/model`) and OUT/fold_in_report.json.")


def dataset_likes(name: str) -> tuple[pd.DataFrame, float]:
    """(every positive interaction of a dataset — user_id, item_id, timestamp — a user's
    first like of an item only, sorted by user and time; its positive rating threshold)."""
    from towerlite.data import load_dataset

    data = load_dataset(name)
    inter = data.interactions
    likes = inter[(inter["rating"] >= data.positive_threshold)
                  & inter["item_id"].isin(data.items["item_id"])]
    likes = likes.sort_values(["user_id", "timestamp"], kind="stable")
    likes = likes.drop_duplicates(["user_id", "item_id"])[["user_id", "item_id", "timestamp"]]
    return likes.reset_index(drop=True), data.positive_threshold


def training_only(likes: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """(the likes of users who are not held out, how many rows were held-out users')."""
    from towerlite.data.splits import is_heldout_user

    held = likes["user_id"].map(is_heldout_user).astype(bool)
    return likes[~held], int(held.sum())


def sequences(likes: pd.DataFrame, row_of: dict[str, int]) -> dict[str, list[int]]:
    """{user: catalog rows liked, oldest → newest} (likes sorted by user and time)."""
    rows = likes["item_id"].map(row_of).to_numpy()
    out: dict[str, list[int]] = {}
    for user, row in zip(likes["user_id"].to_numpy(), rows):
        out.setdefault(user, []).append(int(row))
    return out


@dataclass
class FoldIn:
    """One fold-in's state, setup → train → save → report."""

    model: Path
    feedback: Path
    out: Path
    # 5: on MovieLens' later data (T = 2000-06-01) 2 epochs closed half the gap to a full
    # retrain, 5 all of it (paired difference −0.005 [−0.009, +0.000]) for half its CPU
    # (docs/quality.md, the feedback loop)
    epochs: int = 5
    replay: float = 1.0
    lr: float | None = None  # default: half the tower's own
    progress: bool = True
    tower: object = None
    about: dict = field(default_factory=dict)
    item_ids: list = field(default_factory=list)
    text: object = None
    old: dict = field(default_factory=dict)
    new: pd.DataFrame | None = None
    record: dict = field(default_factory=dict)

    def setup(self) -> None:
        from towerlite.data.feedback import read_feedback
        from towerlite.sequential import WEIGHTS_FILE, SavedTower

        t0 = time.perf_counter()
        self.tower = SavedTower.load(self.model)
        if not (self.model / WEIGHTS_FILE).is_file():
            raise TowerliteError(f"{self.model} has no {WEIGHTS_FILE} (a tower saved before "
                                 "fold-in existed): train it again with `towerlite history`")
        for name in ("history_report.json", "item_ids.json"):
            if not (self.model / name).is_file():
                raise TowerliteError(f"{self.model} has no {name} (`towerlite history` writes "
                                     "it with the tower)")
        self.about = json.loads((self.model / "history_report.json").read_text())
        self.item_ids = json.loads((self.model / "item_ids.json").read_text())
        dataset = self.about.get("dataset")
        if not dataset:
            raise TowerliteError(f"{self.model}/history_report.json names no dataset: the "
                                 "interactions to replay are unknown")
        if dataset == "both":  # user ids are per dataset, and feedback names no dataset
            raise TowerliteError(f"{self.model} was trained on both datasets: fold-in replays "
                                 "one dataset's likes; fold feedback into a one-dataset tower")
        likes, threshold = dataset_likes(dataset)
        # the tower's catalog may be a sample of the dataset's (Book-Crossing: 20,000 items)
        likes = likes[likes["item_id"].isin(set(self.item_ids))]
        feedback = read_feedback(self.feedback, self.item_ids, threshold,
                                 known_users=set(likes["user_id"]))
        before = self.about.get("likes_before")
        if before is not None:
            likes = likes[likes["timestamp"] < before]
        for earlier in self.about.get("feedback", []):  # folded in before: part of the old
            path = Path(earlier["path"])
            if not path.is_file():
                raise TowerliteError(f"{path} (feedback this tower folded in before) is gone: "
                                     "its interactions cannot be replayed")
            likes = pd.concat([likes, _likes_of(read_feedback(path, self.item_ids, threshold))])
        old, _ = training_only(likes)
        kept, dropped = training_only(feedback)
        new = _likes_of(kept)
        row_of = {item: r for r, item in enumerate(self.item_ids)}
        self.old = sequences(_ordered(old), row_of)
        # a like the user had already (in the old part or earlier in the file) is not new
        seen = set(zip(old["user_id"], old["item_id"]))
        new = _ordered(new)
        new = new[[pair not in seen for pair in zip(new["user_id"], new["item_id"])]]
        self.new = new
        self.record = {"feedback": str(self.feedback), "rows": int(len(feedback)),
                       "likes": int(feedback["like"].sum()), "held_out_rows_dropped": dropped,
                       "new_likes": int(len(new)), "users_with_new_likes":
                       int(new["user_id"].nunique()), "dataset": dataset,
                       "likes_before": before}
        if new.empty:
            raise TowerliteError(f"{self.feedback}: no new likes of training users to fold in "
                                 f"({len(feedback)} rows, {dropped} held-out users' dropped)")
        if self.tower.config.use_text:
            self.text = _item_text(dataset, self.item_ids, self.tower.item_model)
        self.record["setup_s"] = round(time.perf_counter() - t0, 1)

    def train(self):
        from towerlite.sequential import WEIGHTS_FILE
        from towerlite.sequential_train import train

        cfg = self.tower.config
        cfg = replace(cfg, epochs=self.epochs, lr=self.lr or cfg.lr / 2)
        row_of = {item: r for r, item in enumerate(self.item_ids)}
        fresh = sequences(self.new, row_of)
        users = sorted(fresh)
        trained = [self.old.get(u, []) + fresh[u] for u in users]
        others = sorted(set(self.old) - set(fresh))
        rng = np.random.default_rng(cfg.seed)
        count = min(len(others), int(round(self.replay * len(users))))
        replayed = [self.old[others[i]] for i in rng.choice(len(others), count, replace=False)]
        every = [*self.old.values(), *[fresh[u] for u in users]]
        counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in every]),
                             minlength=len(self.item_ids))
        t0, cpu0 = time.perf_counter(), time.process_time()
        self.sequences = every  # what the tower has now learnt from: its probes come from it
        model, state = train(cfg, [s for s in trained + replayed if len(s) >= 2],
                             len(self.item_ids), self.text, progress=self.progress,
                             start=self.model / WEIGHTS_FILE, counts=counts)
        self.record.update({"epochs": self.epochs, "lr": cfg.lr, "replay": self.replay,
                            "sequences_new": len(trained), "sequences_replayed": len(replayed),
                            "train_s": round(time.perf_counter() - t0, 1),
                            "train_cpu_s": round(time.process_time() - cpu0, 1),
                            "losses": state.losses})
        return model, cfg

    def save(self, model, cfg) -> Path:
        from towerlite.sequential import probe_histories, save

        about = {**self.about, "feedback": [*self.about.get("feedback", []),
                                            {"path": str(self.feedback.resolve()),
                                             "new_likes": self.record["new_likes"]}],
                 "folded_from": str(self.model)}
        return save(self.out / "model", model, replace(cfg, epochs=self.tower.config.epochs),
                    self.item_ids, self.tower.item_model, about,
                    probe_histories(self.sequences, self.item_ids, cfg.max_len))

    def report(self) -> dict:
        from towerlite.files import write_json_atomic

        write_json_atomic(self.out / "fold_in_report.json", self.record)
        return self.record


def _likes_of(feedback: pd.DataFrame) -> pd.DataFrame:
    return feedback[feedback["like"]][["user_id", "item_id", "timestamp"]]


def _ordered(likes: pd.DataFrame) -> pd.DataFrame:
    likes = likes.sort_values(["user_id", "timestamp"], kind="stable")
    return likes.drop_duplicates(["user_id", "item_id"]).reset_index(drop=True)


def _item_text(dataset: str, item_ids: list[str], item_model: str) -> np.ndarray:
    """The item tower's embeddings of the tower's catalog, in its order (cached)."""
    from towerlite.data import load_dataset
    from towerlite.data.catalog import prepare_items
    from towerlite.evaluation.towers import towers_of

    items = prepare_items(load_dataset(dataset).items).set_index("item_id")
    missing = [i for i in item_ids if i not in items.index]
    if missing:
        raise TowerliteError(f"{len(missing)} item(s) of the tower's catalog are not in "
                             f"{dataset} (e.g. {missing[0]}): its item texts are unknown")
    (tower,) = towers_of(item_model)[:1]
    return tower.embed(items.loc[item_ids, "text"].tolist(), f"{dataset} catalog")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, metavar="TOWER_DIR",
                   help="the history tower to continue from: OUT/model of `towerlite history` "
                        "or of a fold-in, or a release's REPO/history_encoder/R/history")
    p.add_argument("--feedback", type=Path, required=True,
                   help="CSV or JSON Lines: user_id, item_id, event, rating, timestamp")
    p.add_argument("--epochs", type=int, default=FoldIn.epochs,
                   help=f"epochs over new + replay (default {FoldIn.epochs})")
    p.add_argument("--replay", type=float, default=1.0,
                   help="other users' old sequences replayed, per user with new likes (default 1)")
    p.add_argument("--lr", type=float, help="learning rate (default: half the tower's)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", type=Path, default=Path("runs/fold-in"))


def command(args: argparse.Namespace) -> int:
    from towerlite.files import ensure_writable_dir

    if args.epochs < 1 or args.replay < 0:
        raise TowerliteError("--epochs must be at least 1 and --replay at least 0")
    ensure_writable_dir(args.out, "fold-in output folder")
    run = FoldIn(args.model, args.feedback, args.out, args.epochs, args.replay, args.lr,
                 progress=not args.no_progress)
    run.setup()
    model, cfg = run.train()
    folder = run.save(model, cfg)
    r = run.report()
    print(f"folded {r['new_likes']:,} new likes of {r['users_with_new_likes']:,} users "
          f"({r['held_out_rows_dropped']} held-out users' rows dropped) into {folder} in "
          f"{r['train_s']} s ({r['epochs']} epochs, {r['sequences_replayed']:,} sequences "
          f"replayed); serve it: towerlite release --history-model {folder}")
    return 0


if __name__ == "__main__":
    from towerlite.entry import standalone

    sys.exit(standalone("python -m towerlite.distill.fold_in", DESCRIPTION, add_arguments,
                        command))
