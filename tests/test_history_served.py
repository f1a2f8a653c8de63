"""The history user tower on the real MovieLens: no held-out user is trained on, the SASRec
baseline learns, and the tower deployed and served by a real Triton server (`recommend_history`
and `recommend_history_fused`) gives the in-process ranking, with clear errors for bad
histories, catalog updates and releases; the command line trains, saves and reports it, also
under torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from towerlite.sequential import (
    PROBES_FILE,
    HistoryConfig,
    SavedTower,
    onnx_user_vectors,
    probe_histories,
    save,
)
from towerlite.sequential_train import train


@pytest.fixture(scope="module")
def ml_cases(cache):
    from towerlite.evaluation.cases import build_cases

    return build_cases("movielens", users=40, max_history=5, catalog_items=300)


def test_no_held_out_user_is_trained_on(ml_cases):
    from towerlite.data import load_dataset
    from towerlite.data.splits import is_heldout_user, ordered_likes

    likes = ordered_likes(load_dataset("movielens"))
    row = {i: r for r, i in enumerate(ml_cases.item_ids)}
    expected = [[row[i] for i in items if i in row] for u, items in likes.items()
                if not is_heldout_user(u)]
    assert ml_cases.train_sequences == [s for s in expected if s]
    heldout = [[row[i] for i in items if i in row] for u, items in likes.items()
               if is_heldout_user(u)]
    assert heldout and not any(s in ml_cases.train_sequences for s in heldout if len(s) > 3)
    # and every evaluated target is a held-out user's like, so none is a training target
    assert all(is_heldout_user(u) for u in ml_cases.users)


def test_sasrec_baseline_learns_from_the_training_users(ml_cases):
    from towerlite.evaluation.recommend import metric_rows
    from towerlite.evaluation.sequential import sasrec

    scores, about = sasrec(ml_cases, epochs=2, progress=False)
    assert about["training_users"] == len(ml_cases.train_sequences) and len(about["losses"]) == 2
    overall, _ = metric_rows(ml_cases, scores, ml_cases.target_counts <= 2)
    assert 0 <= overall["recall@10"] <= overall["recall@50"] <= 1 and overall["users"] == 40


@pytest.fixture(scope="module")
def history_tower(cache, exported, ml_cases, tmp_path_factory):
    """(folder, item text vectors, the catalog's items): a text + ID tower trained on the eval's
    small MovieLens catalog over the exported student's fp32 item vectors."""
    from towerlite.data import load_dataset
    from towerlite.evaluation.towers import towers_of

    (item_tower,) = towers_of(f"{exported}:fp32")
    text = item_tower.embed(ml_cases.item_texts, "items")
    cfg = replace(HistoryConfig(dim=32, max_len=20, epochs=2, batch_size=64), id_min_likes=3)
    model, state = train(cfg, ml_cases.train_sequences, len(ml_cases.item_ids), text,
                         progress=False)
    folder = tmp_path_factory.mktemp("history") / "model"
    save(folder, model, cfg, ml_cases.item_ids, f"{exported}:fp32", {},
         probe_histories(ml_cases.train_sequences, ml_cases.item_ids, cfg.max_len))
    items = load_dataset("movielens").items
    return folder, text, items[items["item_id"].isin(ml_cases.item_ids)]


@pytest.fixture(scope="module")
def served_history(exported, history_tower, tmp_path_factory):
    """The tower deployed beside the text path, served by a real Triton."""
    from towerlite.serving.deploy import deploy
    from towerlite.serving.triton import start_server

    folder, text, items = history_tower
    repo = tmp_path_factory.mktemp("history-repo")
    deploy(exported, repo, variant="fp32", items=items, index="exact", flavors=("portable",),
           history_model=folder, progress=False)
    with start_server(repo / "portable", log_path=repo / "triton.log") as server:
        yield server, SavedTower.load(folder), text, repo


@pytest.mark.parametrize("model", ["recommend_history", "recommend_history_fused"])
def test_served_history_gives_the_in_process_ranking(served_history, ml_cases, model):
    from towerlite.serving.client import Client

    server, tower, text, _ = served_history
    table = tower.item_table(ml_cases.item_ids, text)
    users = onnx_user_vectors(tower.session(), table, ml_cases.seen, tower.config.max_len)
    ids = np.array(ml_cases.item_ids)
    same, checked = 0, 0
    with Client(server.grpc_url) as client:
        for user, seen in zip(users, ml_cases.seen):
            got = client.recommend_history([ml_cases.item_ids[r] for r in seen], k=10, model=model)
            scores = table @ user
            scores[seen] = -np.inf
            want = ids[np.argsort(-scores, kind="stable")[:10]].tolist()
            assert got.skipped == [] and len(got) == 10
            # the same fp32 graph on one user vs a batch: equal up to float rounding
            np.testing.assert_allclose(got.scores, np.sort(scores)[::-1][:10], atol=1e-4)
            same += got.item_ids == want
            checked += 1
    assert same / checked >= 0.95, f"{same}/{checked} identical top-10 lists"


@pytest.mark.parametrize("model", ["recommend_history", "recommend_history_fused"])
def test_histories_of_any_length_batch_together_and_answer_as_alone(served_history, ml_cases,
                                                                    model):
    """HISTORY and EXCLUDE allow ragged batches: concurrent requests of different lengths join
    one execution of the batching model (history_encoder, or the fused model) and each gets
    the answer it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    from towerlite.serving.bench.stats import delta, snapshot
    from towerlite.serving.client import Client

    server, *_ = served_history
    ids = ml_cases.item_ids
    asks = [([ids[r] for r in seen], [ids[(7 * i + j) % len(ids)] for j in range(i % 4)])
            for i, seen in enumerate(ml_cases.seen[:40])]
    assert len({len(h) for h, _ in asks}) > 5 and len({len(e) for _, e in asks}) == 4

    def ask(history_exclude):
        with Client(server.grpc_url) as client:
            history, exclude = history_exclude
            return client.recommend_history(history, k=10, exclude=exclude or None, model=model)

    alone = [ask(a) for a in asks]
    batching = "history_encoder" if model == "recommend_history" else model
    before = snapshot(server.grpc_url, "grpc", [batching])
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, asks * 4))
    stats = delta(before, snapshot(server.grpc_url, "grpc", [batching]))[batching]
    assert stats["requests"] == 4 * len(asks) and stats["executions"] < stats["requests"]
    same = 0
    for a, b in zip(alone * 4, together):
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)  # padding: float rounding
        same += a.item_ids == b.item_ids
    assert same >= 0.95 * len(together), f"{same}/{len(together)} identical top-10 lists"


@pytest.mark.parametrize("model", ["recommend_history", "recommend_history_fused"])
def test_history_errors_are_clear_and_unknown_ids_are_skipped(served_history, ml_cases, model):
    from functools import partial

    from towerlite.serving.client import Client, ServingError

    server, *_ = served_history
    history = [ml_cases.item_ids[r] for r in ml_cases.seen[0]]
    with Client(server.grpc_url) as client:
        ask = partial(client.recommend_history, model=model)
        got = ask(["no-such-item", *history, "nor-this"], k=5)
        assert got.skipped == ["no-such-item", "nor-this"] and len(got) == 5
        # an id longer than every catalog id, starting with the longest one, is not that one
        # (the lookup's fixed-width byte array would cut it to a match)
        longer = max(ml_cases.item_ids, key=len) + "-but-longer"
        assert ask([longer, *history], k=5).skipped == [longer]
        assert not set(got.item_ids) & set(history)  # the history is left out
        with pytest.raises(ServingError, match="it is empty") as err:
            ask([], k=5)
        assert err.value.status == "StatusCode.INVALID_ARGUMENT"  # the caller's mistake, not a 500
        with pytest.raises(ServingError, match="no item of this catalog"):
            ask(["no-such-item"], k=5)
        with pytest.raises(ServingError, match="MAX_HISTORY"):
            ask(history * 5000, k=5)
        with pytest.raises(ServingError, match="K must be between"):
            ask(history, k=0)
        with pytest.raises(ServingError, match="unknown domain") as err:
            ask(history, k=5, domain="planets")
        assert err.value.caller_error
        books = ask(history, k=3, domain="movie")
        assert books.domains == ["movie"] * 3
        assert client.ready()  # and the server still serves
        assert len(ask(history, k=5)) == 5


def test_deploy_report_and_repository_name_the_history_tower(served_history):
    from towerlite.serving.repository import validate_repository

    _, tower, _, repo = served_history
    report = json.loads((repo / "deploy_report.json").read_text())
    assert report["history_tower"]["folder"] == str(tower.folder)
    configs = validate_repository(repo / "portable")
    assert {"history_encoder", "history_scorer", "recommend_history",
            "recommend_history_fused"} <= set(configs)
    assert configs["history_scorer"].input[0].dims == [tower.config.dim]


def test_deploy_knows_which_item_towers_give_the_trained_vectors(exported):
    """A tower trained on the PyTorch student start reads the same vectors from its fp32 export
    (no warning at deploy), not from the int8 one (whose rows depend on their batch)."""
    from towerlite.serving.deploy import _same_item_vectors, load_export

    fp32, int8 = load_export(exported, "fp32"), load_export(exported, "int8_dynamic")
    assert _same_item_vectors("student-start", fp32)
    assert not _same_item_vectors("student-start", int8)
    assert _same_item_vectors(f"{exported}:int8_dynamic", int8)
    assert not _same_item_vectors(f"{exported}-elsewhere:fp32", fp32)


def test_eval_ranks_a_saved_tower_and_the_demo_check_agrees(served_history, ml_cases, tmp_path):
    """`towerlite eval --history-model` ranks the saved tower as
    `towerlite.evaluation.sequential.saved` does, and `served_agreement` (the demo's
    through-Triton check) finds the server agreeing."""
    from conftest import run_cli

    from towerlite.evaluation.recommend import metric_rows
    from towerlite.evaluation.sequential import saved
    from towerlite.serving.served_quality import deployed_table, served_agreement

    server, tower, text, _ = served_history
    proc = run_cli("eval", "--dataset", "movielens", "--no-teacher", "--no-start", "--users", "40",
                   "--history", "5", "--catalog-items", "300", "--history-model", str(tower.folder),
                   "--sasrec-epochs", "0", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "eval_movielens.json").read_text())["rows"]
    (label,) = [k for k in rows if k.startswith("history tower")]
    scores, _ = saved(ml_cases, tower, text)
    overall, _ = metric_rows(ml_cases, scores, ml_cases.target_counts <= 2)
    assert rows[label]["metrics"]["recall@10"] == overall["recall@10"]
    assert "SASRec" not in rows  # --sasrec-epochs 0 leaves it out
    server, tower, text, repo = served_history
    table = deployed_table(repo / "portable", ml_cases.item_ids)  # what the server reads
    np.testing.assert_allclose(table, tower.item_table(ml_cases.item_ids, text), atol=1e-4)
    agreement = served_agreement(ml_cases, tower, None, server.grpc_url, users=20, table=table)
    assert agreement["agree"] and agreement["users"] == 20, agreement


def test_catalog_update_adds_an_item_the_next_history_request_recommends(served_history, ml_cases):
    """Last in this module: it changes the served catalog. A new movie (no training likes, so
    no ID vector) is ranked by its text through the tower's adapter as soon as the update
    lands, and a history that names it reads it instead of skipping it; a removed movie leaves."""
    import pandas as pd

    from towerlite.data import load_dataset
    from towerlite.serving.catalog_update import update
    from towerlite.serving.client import Client

    server, tower, text, repo = served_history
    items = load_dataset("movielens").items.set_index("item_id", drop=False)
    history = [ml_cases.item_ids[r] for r in ml_cases.seen[0]]
    new = items.loc[[history[-1]]].assign(item_id="new-movie-1", title="A New Movie")
    removed = next(i for i in ml_cases.item_ids if i not in history)
    with Client(server.grpc_url) as client:
        before = client.recommend_history(history + ["new-movie-1"],
                                          k=len(ml_cases.item_ids) - len(history))
        assert before.skipped == ["new-movie-1"] and removed in before.item_ids
        record = update(repo / "portable", items=pd.DataFrame(new), remove=[removed],
                        url=server.grpc_url, progress=False)
        assert record["history"]["version"] == 2 and record["history"]["text_rows"] == 1
        after = client.recommend_history(history, k=len(ml_cases.item_ids) - len(history))
        assert "new-movie-1" in after.item_ids and removed not in after.item_ids
        read = client.recommend_history(history + ["new-movie-1"], k=5)
        assert read.skipped == [] and "new-movie-1" not in read.item_ids  # read, so left out
        # the fused model was reloaded at the new version: the same answers
        fused = client.recommend_history(history, k=len(after), model="recommend_history_fused")
        assert fused.item_ids == after.item_ids
        assert client.recommend_history(history + ["new-movie-1"], k=5,
                                        model="recommend_history_fused").skipped == []
    # its served row is the one its text gives through the adapter, with no ID part
    scorer_ids = np.load(repo / "portable" / "history_scorer" / "2" / "catalog" / "item_ids.npy")
    matrix = np.load(repo / "portable" / "history_scorer" / "2" / "catalog" / "embeddings_t.npy")
    row = matrix[:, list(scorer_ids).index(b"new-movie-1")]
    from towerlite.data.render import item_texts
    from towerlite.evaluation.towers import towers_of

    (item_tower,) = towers_of(tower.item_model)
    expected = tower.item_table(["new-movie-1"], item_tower.encode(item_texts(pd.DataFrame(new))))
    np.testing.assert_allclose(row, expected[0], atol=1e-4)


def test_the_history_scorer_searches_an_index_that_deploy_and_updates_build(
        exported, history_tower, ml_cases, tmp_path):
    """A large catalog's history scorer gets the IVF index the text scorer gets (forced here
    over the small one): both flavors link one index, its recall against exact search is
    recorded, at nprobe = nlist it ranks real users' vectors as the table does, and a catalog
    update rebuilds it over the new table."""
    import faiss

    from towerlite.serving import catalog as cat
    from towerlite.serving import history_update
    from towerlite.serving.deploy import (
        HISTORY_NPROBES,
        HISTORY_RECALL_TARGET,
        check_users,
        deploy,
    )
    from towerlite.serving.release import ReleaseRequest, release

    folder, text, items = history_tower
    report = deploy(exported, tmp_path, variant="fp32", items=items, index="ivf",
                    flavors=("portable", "native"), history_model=folder, progress=False)
    recorded = report["history_tower"]["index"]
    assert recorded["kind"] == "ivf_flat" and 0 < recorded["recall_vs_exact"]["recall"] <= 1
    # no --nprobe: the fewest lists of the ladder whose recall on the tower's users is enough
    sweep = recorded["nprobe_sweep"]
    assert recorded["recall_target"] == HISTORY_RECALL_TARGET
    assert [s["nprobe"] for s in sweep] == list(HISTORY_NPROBES[:len(sweep)])
    assert recorded["nprobe"] == sweep[-1]["nprobe"]
    assert sweep[-1]["recall"] >= HISTORY_RECALL_TARGET or len(sweep) == len(HISTORY_NPROBES)
    # checked with the training histories saved with the tower; one without them: one-item ones
    assert recorded["recall_vs_exact"]["queries_from"] == \
        "200 training users' histories saved with the tower"
    bare = tmp_path / "bare-tower"
    shutil.copytree(folder, bare, ignore=shutil.ignore_patterns(PROBES_FILE))
    table, ids, _ = cat.read_catalog(tmp_path / "portable" / "history_scorer" / "1" / "catalog")
    about, users = check_users(SavedTower.load(bare), np.asarray(table), ids)
    assert about == "the tower's users of one random item" and users.shape == (200, table.shape[1])
    files = [tmp_path / f / "history_scorer" / "1" / "catalog" / "index.faiss"
             for f in ("portable", "native")]
    assert files[0].stat().st_ino == files[1].stat().st_ino  # built once, linked

    tower = SavedTower.load(folder)
    ranked = {}
    for version in (1, 2):
        catalog = tmp_path / "portable" / "history_scorer" / str(version) / "catalog"
        table, ids, meta = cat.read_catalog(catalog)
        assert meta["index"]["kind"] == "ivf_flat" and meta["count"] == len(ids)
        row_of = {item: r for r, item in enumerate(ids)}
        seen = [[row_of[ml_cases.item_ids[r]] for r in rows] for rows in ml_cases.seen[:20]]
        users = onnx_user_vectors(tower.session(), np.asarray(table), seen, tower.config.max_len)
        index = faiss.read_index(str(catalog / "index.faiss"))
        assert index.ntotal == len(ids)
        faiss.extract_index_ivf(index).nprobe = faiss.extract_index_ivf(index).nlist
        scores, got = index.search(users, 10)
        exact = users @ np.asarray(table).T
        np.testing.assert_allclose(scores, -np.sort(-exact, axis=1)[:, :10], rtol=1e-4,
                                   atol=1e-4)
        ranked[version] = ids
        if version == 1:  # the update: one new movie (its row from text), one removed
            new = items.iloc[:1].assign(item_id="new-movie-1")
            history_update.write_versions(tmp_path / "portable", 1, 2, new,
                                          text[:1], {ids[-1]}, ["movie"])
    assert "new-movie-1" in ranked[2] and ranked[1][-1] not in ranked[2]
    # a release of a history tower keeps the served index's kind and nprobe (no server here:
    # the release writes its files and loads nothing)
    done = release(ReleaseRequest(tmp_path / "portable", history_model=folder, progress=False))
    catalog = tmp_path / "portable" / "history_scorer" / str(done["release"]) / "catalog"
    released = json.loads((catalog / "catalog.json").read_text())["index"]
    assert (released["kind"], released["nprobe"]) == (recorded["kind"], recorded["nprobe"])
    assert released["recall_vs_exact"]["queries_from"].startswith("200 training users'")
    assert faiss.read_index(str(catalog / "index.faiss")).ntotal == len(ranked[2])


def test_the_history_scorer_gets_ivf_flat_where_auto_gives_the_text_scorer_sq8():
    from towerlite.serving import index as ix
    from towerlite.serving.deploy import history_index_kind

    assert ix.choose("auto", 275_262) == "ivf_sq8"
    assert history_index_kind("auto", 275_262) == "ivf"  # 64-d: flat lists, no re-scoring
    assert history_index_kind("auto", ix.AUTO_MIN_ITEMS - 1) == "exact"
    assert history_index_kind("auto", ix.AUTO_PQ_MIN_ITEMS) == "ivf_pq"
    assert history_index_kind("ivf_sq8", 275_262) == "ivf_sq8"  # asked for: kept
    assert history_index_kind("exact", 275_262) == "exact"


def test_both_flavors_write_the_history_models(tmp_path):
    """The history path is python models in both flavors (no encoder platform to choose), and
    the default spec writes none of it (the committed repository stays as it is)."""
    from towerlite.serving.repository import (
        FLAVORS,
        RepositorySpec,
        model_configs,
        validate_repository,
        write_code,
    )

    for flavor in FLAVORS:
        assert "recommend_history" not in model_configs(RepositorySpec(), flavor)
        write_code(tmp_path / flavor, RepositorySpec(history_dim=48, history_max_len=30), flavor)
        configs = validate_repository(tmp_path / flavor)
        assert configs["history_scorer"].input[0].dims == [48]
        assert configs["history_encoder"].parameters["MAX_LEN"].string_value == "30"
        assert configs["history_scorer"].parameters["UNKNOWN_EXCLUDE"].string_value == "skip"
        assert "UNKNOWN_EXCLUDE" not in configs["scorer"].parameters
        steps = [s.model_name for s in configs["recommend_history"].ensemble_scheduling.step]
        assert steps == ["history_encoder", "history_scorer"]
        fused = configs["recommend_history_fused"]
        assert fused.parameters["PATH"].string_value == "history"
        chained = configs["recommend_history"]
        assert [t.name for t in fused.output] == [t.name for t in chained.output]
        assert [t.name for t in fused.input] == [t.name for t in chained.input]
        # the batching models join histories (and EXCLUDE lists) of any length
        for name in ("history_encoder", "recommend_history_fused"):
            ragged = {t.name for t in configs[name].input if t.allow_ragged_batch}
            assert ragged == {"HISTORY", "EXCLUDE"}, name
        assert (tmp_path / flavor / "history_encoder" / "1" / "model.py").is_file()
        assert fused.HasField("dynamic_batching") and fused.instance_group[0].count == 2
    # the setting fastest at concurrency 1: one instance, no batcher (nor its queue policy,
    # which stalled a one-instance model 0.5 s on ~1% of requests)
    write_code(tmp_path / "c1", RepositorySpec(history_dim=48, history_instances=1,
                                               history_fused_batching=False), "portable")
    fused = validate_repository(tmp_path / "c1")["recommend_history_fused"]
    assert not fused.HasField("dynamic_batching") and fused.instance_group[0].count == 1


def test_history_cli_trains_saves_and_reports(cache, tmp_path):
    from conftest import run_cli

    proc = run_cli("history", "--catalog-items", "300", "--set", "epochs=1", "--set", "dim=16",
                   "--set", "max_len=10", "--no-progress", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "history_report.json").read_text())
    # a sampled catalog keeps every evaluated user's items: at least the 300 asked, not all 3,883
    assert report["training_users"] > 1000 and 300 <= report["cases"]["catalog_items"] < 3883
    label = "history tower, text + ID (ONNX, as served)"
    assert {label, "popularity", "co-occurrence"} <= set(report["rows"])
    assert 0 <= report["rows"][label]["metrics"]["recall@10"] <= 1
    assert "cpu_flags" in report["machine"]
    tower = SavedTower.load(tmp_path / "model")
    assert tower.config.dim == 16
    # 200 training histories saved with it (deploy checks a history index with them): the
    # newest max_len of each, items of the training catalog
    probes, catalog = tower.probes(), set(json.loads((tower.folder / "item_ids.json").read_text()))
    assert len(probes) == 200 and all(1 <= len(p) <= 10 and set(p) <= catalog for p in probes)
    assert f"deploy --history-model {tmp_path / 'model'}" in proc.stdout
    # the graph variants (default: both): a row each, a folder where the gate passed
    for variant in ("int8_dynamic", "fp16"):
        row = report["rows"][f"history tower, text + ID, {variant} graph"]
        passed = row["graph_variant"]["gate"]["passed"]
        assert (tmp_path / f"model-{variant}").is_dir() == passed
        assert 0 <= row["metrics"]["recall@10"] <= 1
    assert "| fp32 | 1 | 1 |" in proc.stdout and "top-10 overlap with fp32" in proc.stdout
    bad = run_cli("history", "--variants", "int4", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "--variants: unknown ['int4']" in bad.stderr
    bad = run_cli("history", "--set", "layers=two", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "layers takes an integer, not 'two'" in bad.stderr
    bad = run_cli("history", "--set", "colour=red", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and "not FIELD=VALUE with a HistoryConfig field" in bad.stderr


def test_history_trains_under_torchrun(cache, tmp_path):
    """Two processes (gloo): each trains on its half of every batch, the first alone writes
    the checkpoint, the tower and the report."""
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "towerlite.distill.history",
         "--catalog-items", "300", "--set", "epochs=2", "--set", "dim=16", "--set", "max_len=10",
         "--variants", "", "--no-progress", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "history_report.json").read_text())
    assert report["timings"]["world_size"] == 2
    about = json.loads((tmp_path / "model" / "history_report.json").read_text())
    assert about["epochs"] == 2 and about["losses"][1] < about["losses"][0]
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1
    assert proc.stdout.count("| history tower, text + ID (ONNX, as served) |") == 1  # one report


def test_bench_history_requests_are_held_out_likes(cache):
    from towerlite.data import load_dataset
    from towerlite.data.splits import is_heldout_user, ordered_likes
    from towerlite.serving.bench.inputs import build_requests, perf_analyzer_data

    requests = build_requests(["movielens"], 30, k=5, max_history=50, kind="history")
    likes = ordered_likes(load_dataset("movielens"))
    held = {tuple(items[-len(h):]) for u, items in likes.items() if is_heldout_user(u)
            for h in requests.texts if len(items) >= len(h)}
    assert len(requests.texts) == 30 and all(1 <= len(h) <= 50 for h in requests.texts)
    assert all(tuple(h) in held for h in requests.texts)  # each the newest likes of a held-out user
    rows = perf_analyzer_data(requests)["data"]
    assert rows[0]["HISTORY"] == {"content": requests.texts[0], "shape": [len(requests.texts[0])]}
    assert "TEXT" not in rows[0] and requests.describe()["kind"] == "history"
    text_requests = build_requests(["movielens"], 30, k=5, max_history=50)
    assert requests.fingerprint != text_requests.fingerprint


def test_a_new_history_tower_is_released_and_rolled_back(served_history, ml_cases, tmp_path):
    """After the catalog update above: a history tower trained with another seed is released
    (release 3: its item table over release 2's catalog, nothing else changed) on the running
    server, every answer names the release, and each release ranks with its own table; then
    rolled back to release 2."""
    from towerlite.serving.client import Client
    from towerlite.serving.release import ReleaseRequest, release, rollback
    from towerlite.serving.release.reference import ReleaseReference

    server, tower, text, repo = served_history
    flavor = repo / "portable"
    model, _ = train(replace(tower.config, seed=1), ml_cases.train_sequences,
                     len(ml_cases.item_ids), text, progress=False)
    folder = save(tmp_path / "model", model, tower.config, ml_cases.item_ids, tower.item_model,
                  {})
    history = [ml_cases.item_ids[r] for r in ml_cases.seen[1]]

    expected = ReleaseReference(flavor)  # each release's scores from its own files

    done = release(ReleaseRequest(flavor, history_model=folder, urls=(server.grpc_url,),
                                  progress=False))
    assert done["release"] == 3 and list(done["changed"]) == ["history_encoder"]
    with Client(server.grpc_url) as client:
        for model_name in ("recommend_history", "recommend_history_fused"):
            got = client.recommend_history(history, k=10, model=model_name)
            assert got.release == 3
            np.testing.assert_allclose(got.scores, expected.scores(3, history), atol=1e-4)
        # the towers differ
        assert not np.allclose(expected.scores(3, history), expected.scores(2, history), atol=1e-3)
        rollback(flavor, [server.grpc_url])
        got = client.recommend_history(history, k=10)
        assert got.release == 2
        np.testing.assert_allclose(got.scores, expected.scores(2, history), atol=1e-4)
    # the release's catalog is release 2's, shared
    shared = [flavor / "scorer" / v / "catalog" / "embeddings_t.npy" for v in ("2", "3")]
    assert shared[0].stat().st_ino == shared[1].stat().st_ino
    # a served release's tower folder (fold-in's starting point) released again: release 3's
    # files are read, never written through the links of release 4
    served = flavor / "history_encoder" / "3" / "history"
    before = {f.name: f.read_bytes() for f in served.iterdir() if f.is_file()}
    again = release(ReleaseRequest(flavor, history_model=served, progress=False))
    assert again["release"] == 4
    assert {f.name: f.read_bytes() for f in served.iterdir() if f.is_file()} == before
