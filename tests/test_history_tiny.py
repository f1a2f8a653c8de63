"""The history tower's tiny-model tier: a tower over a tiny text model's item vectors (tests/
conftest.py), evaluated on synthetic cases through its saved graph, over both datasets, over a
whole catalog, and its int8 / fp16 graphs gated on ranking agreement. No assets."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from test_history import TINY

from towerlite.sequential import (
    SavedTower,
    onnx_user_vectors,
    save,
    user_vectors,
)
from towerlite.sequential_train import train


def test_tiny_history_tower_is_evaluated_through_its_saved_graph(tiny_export, tmp_path):
    from conftest import tiny_cases

    from towerlite.evaluation.recommend import evaluate, metric_rows
    from towerlite.evaluation.sequential import saved, trained
    from towerlite.evaluation.towers import towers_of

    cases = tiny_cases()
    item_model = f"{tiny_export}:fp32"
    (item_tower,) = towers_of(item_model)
    text = item_tower.embed(cases.item_texts, "items")
    cfg = replace(TINY, epochs=2)
    scores, about = trained(cases, cfg, text, progress=False)
    assert len(about["losses"]) == 2 and about["training_users"] == len(cases.train_sequences)
    model, _ = train(cfg, cases.train_sequences, len(cases.item_ids), text, progress=False)
    folder = save(tmp_path / "tower", model, cfg, cases.item_ids, item_model, {})
    tower = SavedTower.load(folder)
    assert tower.item_model == item_model and tower.config.max_len == cfg.max_len
    report = evaluate(cases, [], baselines=True, history_towers=(tower,))
    label, *baselines = report["rows"]
    assert label.startswith("history tower, text + ID") and baselines
    # every other row carries the tower's Recall@10 minus its own on the same users
    tower_recall = report["rows"][label]["metrics"]["recall@10"]
    for name in baselines:
        row = report["rows"][name]
        paired = row["tower_minus_this_recall@10"]
        assert paired["tower"] == label and paired["all"]["ci95"][0] <= paired["all"]["mean"]
        assert abs(paired["all"]["mean"] - (tower_recall - row["metrics"]["recall@10"])) <= 2e-4
    assert "tower_minus_this_recall@10" not in report["rows"][label]
    graph_scores, graph_about = saved(cases, tower, text)
    overall, _ = metric_rows(cases, graph_scores, cases.target_counts <= 2)
    assert report["rows"][label]["metrics"] == overall  # the item text embedded the same way
    assert graph_about["item_model"] == item_model and 0 <= overall["recall@10"] <= 1
    # the graph's users against the trained model's own: the same vectors
    users = onnx_user_vectors(tower.session(), tower.item_table(cases.item_ids, text), cases.seen,
                              cfg.max_len)
    np.testing.assert_allclose(users, user_vectors(model, cases.seen, cfg.max_len), atol=1e-4)


def test_one_history_tower_over_both_datasets(tiny_export, tmp_path, monkeypatch):
    """--dataset both (synthetic cases standing in for the two datasets): one tower over both
    catalogs, the first dataset's rows first, ID vectors in each; each dataset evaluated over its
    own catalog as a one-dataset tower is; the softmax within a target's domain; fold-in, which
    replays one dataset's likes, and --parts refuse it."""
    from conftest import run_cli, tiny_cases

    from towerlite.distill.history import HistoryRun
    from towerlite.evaluation import cases as cases_module
    from towerlite.evaluation.recommend import metric_rows
    from towerlite.evaluation.sequential import saved
    from towerlite.sequential_train import full_loss, sampled_loss

    def fake(name, **_):  # the second dataset: its own ids, catalog size and users
        c = tiny_cases(n_items=60 if name == "movielens" else 45, seed=len(name))
        ids = [f"{name[:2]}{i}" for i in range(len(c.item_ids))]
        return replace(c, dataset=name, item_ids=ids)

    monkeypatch.setattr(cases_module, "build_cases", fake)
    cfg = replace(TINY, epochs=2, validation=0.2, bucket_by_length=True)
    run = HistoryRun("both", f"{tiny_export}:fp32", tmp_path, cfg)
    run.setup()
    model, state = run.train()
    folder = run.save(model, state)
    run.evaluate(folder)
    report = run.report()
    assert report["cases"].keys() == {"movielens", "bookcrossing"}
    ids = json.loads((folder / "item_ids.json").read_text())
    assert ids == [f"mo{i}" for i in range(60)] + [f"bo{i}" for i in range(45)]
    warm = json.loads((folder / "id_items.json").read_text())
    assert {i[:2] for i in warm} == {"mo", "bo"}
    assert len(state.validation) == 3 and report["training_users"] == len(run.sequences)
    label = "history tower, text + ID (ONNX, as served)"
    for (cases, text), offset in zip(run.evaluated, (0, 60)):
        overall, _ = metric_rows(cases, saved(cases, SavedTower.load(folder), text)[0],
                                 cases.target_counts <= 2)
        assert report["rows"][f"{cases.dataset}: {label}"]["metrics"] == overall
        assert f"{cases.dataset}: popularity" in report["rows"]
        assert [[r - offset for r in s] for s in run.sequences if min(s) >= offset
                and max(s) < offset + len(cases.item_ids)] == cases.train_sequences
    # within domains: each target against its own domain's rows, the losses averaged
    import torch

    h, table, t = torch.randn(30, 16), torch.randn(105, 16), torch.randint(0, 105, (30,))
    batch = torch.stack([torch.zeros(30, dtype=torch.long), t], 1)  # one position per window

    def model(inputs, needed=None):  # h for every window's one position; the rows asked for
        return h.unsqueeze(1), table if needed is None else table[needed]

    each = [torch.nn.functional.cross_entropy(h[i:i + 1] @ (table[:60] if t[i] < 60 else
            table[60:]).T, t[i:i + 1] - (0 if t[i] < 60 else 60)) for i in range(30)]
    assert float(full_loss(TINY, model, batch, torch.zeros(105), [(0, 60), (60, 105)])) == \
        pytest.approx(float(torch.stack(each).mean()), rel=1e-5)
    # sampled: each target against the batch's targets and the shared sample, a sampled copy of
    # the target left out
    sample = torch.cat([t[:3], torch.randint(0, 105, (20,))])
    each = [torch.nn.functional.cross_entropy(
        h[i:i + 1] @ table[torch.cat([t, sample[sample != t[i]]])].T,
        torch.tensor([i])) for i in range(30)]
    assert float(sampled_loss(TINY, model, batch, sample)) == \
        pytest.approx(float(torch.stack(each).mean()), rel=1e-5)
    feedback = tmp_path / "feedback.csv"
    feedback.write_text("user_id,item_id,rating,timestamp\n")
    refused = run_cli("fold-in", "--model", str(folder), "--feedback", str(feedback),
                      "--out", str(tmp_path / "fold"))
    assert refused.returncode == 1 and "trained on both datasets" in refused.stderr
    bad = run_cli("history", "--dataset", "both", "--parts", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "not with --dataset both" in bad.stderr


def test_a_tower_trained_over_the_whole_catalog_is_evaluated_over_the_sample(
        tiny_export, tmp_path, monkeypatch):
    """--train-catalog whole (synthetic cases standing in for Book-Crossing): the tower trains
    over the whole catalog on every training user's complete history, and is evaluated over the
    sampled candidate catalog (every evaluated user's items, a share of the others) exactly as a
    saved tower is; no held-out user is read either way."""
    from conftest import run_cli, tiny_cases

    from towerlite.distill.history import HistoryRun, markdown
    from towerlite.evaluation import cases as cases_module
    from towerlite.evaluation.recommend import metric_rows
    from towerlite.evaluation.sequential import saved

    whole = tiny_cases(n_items=60)
    needed = {r for rows in whole.seen for r in rows} | set(whole.targets.tolist())
    keep = sorted(needed | set(range(0, 60, 3)))
    assert len(keep) < 60
    new = {r: i for i, r in enumerate(keep)}

    def remap(rows):
        return [new[r] for r in rows if r in new]

    sample = replace(
        whole, item_ids=[whole.item_ids[r] for r in keep],
        item_texts=[whole.item_texts[r] for r in keep],
        histories=[remap(h) for h in whole.histories], seen=[remap(h) for h in whole.seen],
        targets=np.array([new[t] for t in whole.targets]),
        train_likes=[r for r in map(remap, whole.train_likes) if r],
        train_sequences=[r for r in map(remap, whole.train_sequences) if r],
        settings={**whole.settings, "catalog_items": len(keep), "catalog_full": False})
    monkeypatch.setattr(cases_module, "build_cases",
                        lambda name, catalog_items=0, **_: sample if catalog_items else whole)
    run = HistoryRun("bookcrossing", f"{tiny_export}:fp32", tmp_path, replace(TINY, epochs=2),
                     {"bookcrossing": len(keep)}, train_whole=True)
    run.setup()
    assert run.item_ids == whole.item_ids and run.sequences == whole.train_sequences
    assert sum(map(len, sample.train_sequences)) < sum(map(len, run.sequences))
    (cases, text), = run.evaluated
    assert cases is sample and len(text) == len(keep) and len(run.text) == 60
    model, state = run.train()
    folder = run.save(model, state)
    run.evaluate(folder)
    report = run.report()
    assert json.loads((folder / "item_ids.json").read_text()) == whole.item_ids
    assert report["trained_on_whole_catalog"] and report["training_catalog_items"] == 60
    header = markdown(report).splitlines()
    assert "trained over the whole catalog (60 items)" in header[0]
    assert f"cold-start R@10 ({report['cold_start_users']} users) |" in header[2]
    assert "trained over" not in markdown({**report, "trained_on_whole_catalog": False})
    overall, _ = metric_rows(sample, saved(sample, SavedTower.load(folder), text)[0],
                             sample.target_counts <= 2)
    rows = report["rows"]
    assert rows["history tower, text + ID (ONNX, as served)"]["metrics"] == overall
    # every other row paired with the tower on the same users: the mean of the differences is
    # the difference of the means (each rounded to 4 places)
    from towerlite.distill.history import TEXT_MEAN

    tower = rows["history tower, text + ID (ONNX, as served)"]
    assert "tower_minus_this_recall@10" not in tower
    for name in (TEXT_MEAN, "popularity", "co-occurrence"):
        for part, key in (("all", "metrics"), ("cold_start", "cold_start")):
            paired = rows[name]["tower_minus_this_recall@10"][part]
            if tower[key]["recall@10"] is None:
                assert paired["mean"] is None
                continue
            assert paired["mean"] == pytest.approx(
                tower[key]["recall@10"] - rows[name][key]["recall@10"], abs=2e-4)
            assert paired["ci95"][0] <= paired["mean"] <= paired["ci95"][1]
    assert f"| {TEXT_MEAN} |" in markdown(report)
    # the same held-out users ranked over the whole catalog as well, every row
    (whole_cases, whole_text), = run.whole
    assert whole_cases is whole and len(whole_text) == 60
    where = "whole catalog (60 items): "
    assert {where + name for name in rows if not name.startswith("whole")} == {
        name for name in rows if name.startswith(where)}
    overall, _ = metric_rows(whole, saved(whole, SavedTower.load(folder), whole_text)[0],
                             whole.target_counts <= 2)
    assert rows[where + "history tower, text + ID (ONNX, as served)"]["metrics"] == overall
    bad = run_cli("history", "--dataset", "bookcrossing", "--train-catalog", "whole", "--parts",
                  "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "not with --train-catalog whole" in bad.stderr


def test_graph_variants_are_written_and_gated_on_top10_agreement(tiny_export, tmp_path):
    """int8 and fp16 graphs of a saved tower: a tower folder each, the graph really converted,
    its user vectors near fp32's, and the top-10 agreement measured against the fp32 graph
    (the fp32 graph against itself agrees exactly)."""
    import onnx
    from conftest import tiny_cases

    from towerlite.distill import history_variants
    from towerlite.evaluation.towers import towers_of
    from towerlite.sequential import ONNX_FILE

    cases = tiny_cases()
    item_model = f"{tiny_export}:fp32"
    text = towers_of(item_model)[0].embed(cases.item_texts, "items")
    model, _ = train(replace(TINY, epochs=2), cases.train_sequences, len(cases.item_ids), text,
                     progress=False)
    reference = SavedTower.load(save(tmp_path / "model", model, TINY, cases.item_ids, item_model,
                                     {}))
    same = history_variants.compare(cases, reference, reference, text)
    assert same["top10_overlap"] == 1.0 and same["identical_top10"] == 1.0
    assert same["gate"]["passed"]
    table = reference.item_table(cases.item_ids, text)
    want = onnx_user_vectors(reference.session(), table, cases.seen, TINY.max_len)
    for variant, op, tolerance in (("int8_dynamic", "DynamicQuantizeLinear", 0.5),
                                   ("fp16", "Cast", 2e-2)):
        folder = history_variants.write(reference.folder, variant)
        assert folder == tmp_path / f"model-{variant}"
        assert op in {n.op_type for n in onnx.load(str(folder / ONNX_FILE)).graph.node}
        tower = SavedTower.load(folder)
        assert json.loads((folder / "config.json").read_text())["graph_variant"]["name"] == variant
        np.testing.assert_array_equal(tower.item_table(cases.item_ids, text), table)
        got = onnx_user_vectors(tower.session(), table, cases.seen, TINY.max_len)
        assert np.abs(got - want).max() < tolerance * np.abs(want).max()
        measured = history_variants.compare(cases, reference, tower, text)
        assert 0 <= measured["identical_top10"] <= measured["top10_overlap"] <= 1
        assert measured["gate"]["passed"] == (
            measured["top10_overlap"] >= history_variants.MIN_TOP10_OVERLAP)
        assert set(measured["latency_batch1_1thread"]) == {"history_8"}
