"""Feedback in: the feedback file format (towerlite.data.feedback) and `towerlite fold-in`, which
fine-tunes a history tower from its own weights on the new likes plus a replay sample. Real
MovieLens-1M interactions; a small ID-only tower (no text: its catalog embedding would take
minutes) trained here on likes before a cut date, then folded with the ratings after it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from towerlite.data.feedback import read_feedback
from towerlite.errors import TowerliteError

CATALOG = ["m1", "m2", "m3"]
HEADER = "user_id,item_id,event,rating,timestamp"


def _file(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


def test_feedback_rows_are_read_with_likes_and_timestamps(tmp_path):
    csv = _file(tmp_path / "f.csv", HEADER, "u1,m1,rating,5,975000000",
                "u1,m2,rating,3,2000-12-24T18:00:00Z", "u2,m3,like,,975000100",
                "u2,m1,click,,975000200")
    rows = read_feedback(csv, CATALOG)
    assert rows["like"].tolist() == [True, False, True, False]
    assert rows["timestamp"].tolist() == [975000000, 977680800, 975000100, 975000200]
    assert rows.index.tolist() == [2, 3, 4, 5]  # file lines, for errors
    jsonl = _file(tmp_path / "f.jsonl", json.dumps({"user_id": "u1", "item_id": "m1",
                                                    "event": "like", "timestamp": 975000000}))
    assert read_feedback(jsonl, CATALOG)["like"].tolist() == [True]


@pytest.mark.parametrize("lines, message", [
    ((), "no interactions"),
    ((HEADER,), "no interactions"),
    (("user_id,item_id,timestamp", "u1,m1,975000000"), "missing column.*event"),
    ((HEADER, "u1,m1,watch,,975000000"), "unknown event on line.* 2"),
    ((HEADER, "u1,m1,like,,975000000", "u1,m2,rating,,975000000"),
     "rating without a numeric rating on line.* 3"),
    ((HEADER, "u1,m1,like,,yesterday"), "timestamp not Unix seconds or ISO 8601 on line.* 2"),
    ((HEADER, "u1,m1,like,,-5"), "timestamp not Unix seconds"),
    ((HEADER, "u1,m1,like,,4102444800"), "timestamp in the future"),
    ((HEADER, "u1,m9,like,,975000000", "u1,m1,like,,975000000", "u2,m8,like,,975000000"),
     "2 interaction.* items the catalog does not hold on line.* 2, 4 \\(m9, m8\\)"),
    ((HEADER, ",m1,like,,975000000"), "empty user_id on line.* 2"),
])
def test_bad_feedback_is_a_clear_error(tmp_path, lines, message):
    with pytest.raises(TowerliteError, match=message):
        read_feedback(_file(tmp_path / "f.csv", *lines), CATALOG)


def test_user_ids_without_the_dataset_prefix_are_refused(tmp_path):
    """A held-out MovieLens user written as `123` instead of `1m_123` would be hashed under the
    wrong id and trained on: refused. New users (no such id at all) are fine."""
    known = {"1m_1", "1m_123", "1m_6040"}
    ok = _file(tmp_path / "ok.csv", HEADER, "1m_123,m1,like,,975000000",
               "someone-new,m2,like,,975000000")
    assert len(read_feedback(ok, CATALOG, known_users=known)) == 2
    bad = _file(tmp_path / "bad.csv", HEADER, "1m_1,m1,like,,975000000", "123,m2,like,,975000000")
    with pytest.raises(TowerliteError, match="without the dataset's prefix '1m_' on line.* 3"):
        read_feedback(bad, CATALOG, known_users=known)


def test_bad_jsonl_and_missing_file(tmp_path):
    with pytest.raises(TowerliteError, match="f.jsonl, line 2: not JSON"):
        read_feedback(_file(tmp_path / "f.jsonl", '{"user_id": "u"}', "{oops"), CATALOG)
    with pytest.raises(TowerliteError, match="no such feedback file"):
        read_feedback(tmp_path / "none.csv", CATALOG)


CUT = int(datetime(2000, 12, 1, tzinfo=timezone.utc).timestamp())


@pytest.fixture(scope="module")
def tower(cache, tmp_path_factory):
    """A 16-d ID-only tower trained one epoch on 300 training users' likes before CUT."""
    from towerlite.data import load_dataset
    from towerlite.data.catalog import prepare_items
    from towerlite.distill.fold_in import dataset_likes, sequences, training_only
    from towerlite.sequential import HistoryConfig, save
    from towerlite.sequential_train import train

    item_ids = list(prepare_items(load_dataset("movielens").items)["item_id"])
    likes, _ = training_only(dataset_likes("movielens")[0])
    old = likes[likes["timestamp"] < CUT]
    users = sorted(old["user_id"].unique())[:300]
    seqs = sequences(old[old["user_id"].isin(users)], {i: r for r, i in enumerate(item_ids)})
    cfg = HistoryConfig(dim=16, heads=2, layers=1, max_len=20, epochs=1, use_text=False,
                        id_min_likes=1, batch_size=64)
    model, _ = train(cfg, list(seqs.values()), len(item_ids), None, progress=False)
    folder = save(tmp_path_factory.mktemp("tower") / "model", model, cfg, item_ids, "", {
        "dataset": "movielens", "likes_before": CUT})
    return folder, users


def _feedback(tmp_path: Path, users: list[str]) -> tuple[Path, int]:
    """The ratings after CUT of 20 of the tower's users and of one held-out user."""
    from towerlite.data import load_dataset
    from towerlite.data.splits import is_heldout_user

    inter = load_dataset("movielens").interactions
    later = inter[inter["timestamp"] >= CUT]
    held = next(u for u in later["user_id"].unique() if is_heldout_user(u))
    rows = later[later["user_id"].isin([*users[:20], held])]
    rows.assign(event="rating")[["user_id", "item_id", "event", "rating", "timestamp"]] \
        .to_csv(tmp_path / "feedback.csv", index=False)
    return tmp_path / "feedback.csv", int((rows["user_id"] == held).sum())


def test_fold_in_continues_from_the_tower_on_new_likes_and_drops_held_out_users(tower,
                                                                                 tmp_path):
    import torch

    from towerlite.distill.fold_in import FoldIn
    from towerlite.sequential import WEIGHTS_FILE, SavedTower

    folder, users = tower
    feedback, held_rows = _feedback(tmp_path, users)
    run = FoldIn(folder, feedback, tmp_path / "out", epochs=1, replay=1.0, progress=False)
    run.setup()
    assert run.record["held_out_rows_dropped"] == held_rows > 0
    assert run.record["new_likes"] > 0 and run.record["users_with_new_likes"] <= 20
    model, cfg = run.train()
    new = run.save(model, cfg)
    record = run.report()
    assert record["sequences_new"] == record["users_with_new_likes"]
    assert 0 < record["sequences_replayed"] <= record["sequences_new"]
    # it started from the tower's weights (one epoch moves them a little, not from scratch)
    before = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    after = torch.load(new / WEIGHTS_FILE, weights_only=True)
    moved = [float((after[k] - before[k]).norm() / before[k].norm()) for k in before
             if before[k].dtype.is_floating_point and before[k].norm() > 0]
    assert 0 < np.median(moved) < 0.5
    # items first liked in the feedback have ID vectors now; the report says what it learnt
    grown = json.loads((new / "id_items.json").read_text())
    assert set(json.loads((folder / "id_items.json").read_text())) < set(grown)
    about = json.loads((new / "history_report.json").read_text())
    assert about["feedback"][0]["path"] == str(feedback.resolve())
    assert about["likes_before"] == CUT and SavedTower.load(new).config.epochs == 1
    # the histories deploy checks an index with: from what it learnt, its catalog's items
    probes = SavedTower.load(new).probes()
    assert probes and set().union(*map(set, probes)) <= set(json.loads(
        (new / "item_ids.json").read_text()))
    # a second fold-in of the same file finds nothing new: the old part now includes it
    again = FoldIn(new, feedback, tmp_path / "again", progress=False)
    with pytest.raises(TowerliteError, match="no new likes of training users"):
        again.setup()


def test_fold_in_bad_input_writes_nothing(tower, tmp_path):
    from conftest import run_cli

    folder, _ = tower
    bad = _file(tmp_path / "bad.csv", HEADER, "1m_1,no-such-movie,like,,975000000")
    out = tmp_path / "out"
    done = run_cli("fold-in", "--model", str(folder), "--feedback", str(bad), "--out", str(out),
                   "--no-progress")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "items the catalog does not hold on line(s) 2 (no-such-movie)" in done.stderr
    assert not (out / "model").exists()
    done = run_cli("fold-in", "--model", str(tmp_path), "--feedback", str(bad), "--out", str(out))
    assert done.returncode == 1 and "is not a history tower folder" in done.stderr
