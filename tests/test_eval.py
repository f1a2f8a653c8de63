"""`towerlite eval` on real data, small samples: metrics by hand, no leakage, the shared item
rendering, the baselines, the CLI's errors, and the same numbers through a real Triton server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

from towerlite.evaluation.metrics import dot_scores, per_user, summarize, target_ranks


def test_metrics_match_hand_computed_values():
    # 3 users over 5 items; history masked; user 2's target ties with two other items
    scores = np.array([[0.9, 0.8, 0.1, 0.5, 0.2],
                       [0.9, 0.8, 0.1, 0.5, 0.2],
                       [0.3, 0.3, 0.3, 0.9, 0.0]], dtype=np.float32)
    above, tied = target_ranks(lambda a, b: scores[a:b], targets=[1, 3, 0], exclude=[[0], [], [3]])
    assert above.tolist() == [0, 2, 0] and tied.tolist() == [0, 0, 2]
    v = per_user(above, tied, ks=(1, 3), ndcg_k=2)
    assert v["recall@1"].tolist() == pytest.approx([1, 0, 1 / 3])  # tied target: first 1 time in 3
    assert v["recall@3"].tolist() == pytest.approx([1, 1, 1])
    assert v["ndcg@2"].tolist() == pytest.approx([1, 0, (1 + 1 / np.log2(3)) / 3])
    assert v["mrr"].tolist() == pytest.approx([1, 1 / 3, (1 + 1 / 2 + 1 / 3) / 3])
    s = summarize(v)
    assert s["users"] == 3 and s["mrr"] == pytest.approx(round((1 + 1 / 3 + 11 / 18) / 3, 4))
    assert s["mrr_ci95"][0] <= s["mrr"] <= s["mrr_ci95"][1]


@pytest.fixture(scope="module")
def ml_cases(cache):
    from towerlite.evaluation.cases import build_cases

    return build_cases("movielens", users=200, max_history=5, catalog_items=600)


@pytest.fixture(scope="module")
def bx_cases(cache):
    from towerlite.evaluation.cases import build_cases

    return build_cases("bookcrossing", users=200, max_history=5, catalog_items=2000)


def test_leave_last_out_never_leaks_the_target(ml_cases, bx_cases):
    from towerlite.data import load_dataset
    from towerlite.data.splits import is_heldout_user

    ml = load_dataset("movielens")
    liked = ml.interactions[ml.interactions["rating"] >= ml.positive_threshold]
    last_time = liked.groupby("user_id")["timestamp"].max()
    for cases in (ml_cases, bx_cases):
        assert all(is_heldout_user(u) for u in cases.users)
        for hist, seen, target in zip(cases.histories, cases.seen, cases.targets):
            assert target not in hist and target not in seen
            assert set(hist) <= set(seen) and len(hist) <= 5
    by_id = ml.interactions.set_index(["user_id", "item_id"])["timestamp"]
    for user, target in zip(ml_cases.users, ml_cases.targets):  # the target is the newest like
        assert by_id[user, ml_cases.item_ids[target]] == last_time[user]


def test_training_part_drops_exactly_the_targets(ml_cases):
    from towerlite.data import load_dataset
    from towerlite.data.splits import ordered_likes

    likes = ordered_likes(load_dataset("movielens"))
    in_catalog = set(ml_cases.item_ids)
    total = sum(1 for items in likes.values() for i in items if i in in_catalog)
    assert sum(map(len, ml_cases.train_likes)) == total - len(ml_cases.users)
    counts = np.bincount(np.concatenate(ml_cases.train_likes), minlength=len(ml_cases.item_ids))
    assert (counts[ml_cases.targets] == ml_cases.target_counts).all()


def test_bookcrossing_order_is_seeded(cache):
    from towerlite.data import load_dataset
    from towerlite.data.splits import ordered_likes

    bx = load_dataset("bookcrossing")
    a, b, c = ordered_likes(bx, 0), ordered_likes(bx, 0), ordered_likes(bx, 1)
    long = [u for u, items in a.items() if len(items) >= 5][:50]
    assert all(a[u] == b[u] for u in long)
    assert any(a[u] != c[u] for u in long) and all(sorted(a[u]) == sorted(c[u]) for u in long)


def test_item_text_is_the_rendering_the_served_catalog_uses(ml_cases, bx_cases):
    from towerlite.serving.catalog import catalog_items

    for cases, name in ((ml_cases, "movielens"), (bx_cases, "bookcrossing")):
        served = catalog_items([name]).set_index("item_id")["text"]
        assert [served[i] for i in cases.item_ids] == cases.item_texts


def test_baselines_rank_by_the_training_part(ml_cases):
    from towerlite.evaluation.baselines import co_occurrence, popularity

    counts = np.bincount(np.concatenate(ml_cases.train_likes), minlength=len(ml_cases.item_ids))
    pop = popularity(ml_cases)(0, 3)
    assert (pop == counts).all()
    # co-occurrence by hand for one user: sum over history of cosine co-occurrence
    co = co_occurrence(ml_cases)(0, 1)[0]
    sets = [set(t) for t in ml_cases.train_likes]
    j = int(np.argmax(co))
    by_hand = sum(sum(1 for s in sets if i in s and j in s) / np.sqrt(counts[i] * counts[j])
                  for i in ml_cases.histories[0] if counts[i])
    assert co[j] == pytest.approx(by_hand, rel=1e-5)


def test_eval_cli_writes_a_table_with_baselines_and_towers(cache, exported, tmp_path):
    proc = run_cli("eval", "--dataset", "movielens", "--no-teacher", "--users", "60",
                   "--catalog-items", "400", "--model", f"{exported}:int8_dynamic",
                   "--sasrec-epochs", "1", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval_movielens.json").read_text())
    rows = report["rows"]
    assert {"student-start (PyTorch fp32)", "popularity", "co-occurrence", "SASRec"} <= set(rows)
    assert rows["SASRec"]["model"] == "ID only (SASRec)" and len(rows["SASRec"]["losses"]) == 1
    assert any("ONNX int8_dynamic" in r for r in rows)
    for row in rows.values():
        m = row["metrics"]
        assert 0 <= m["recall@10"] <= m["recall@50"] <= 1 and m["users"] == 60
        assert m["recall@10_ci95"][0] <= m["recall@10"] <= m["recall@10_ci95"][1]
    assert "| popularity |" in (tmp_path / "eval_movielens.md").read_text()
    assert "| popularity |" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--dataset", "netflix"], "invalid choice"),
    (["--dataset", "movielens", "--model", "/nonexistent/model"], "is not a folder"),
    (["--dataset", "movielens", "--model", "tests"], "neither ONNX files nor"),
])
def test_eval_bad_input_gives_a_clear_error(cache, tmp_path, args, message):
    proc = run_cli("eval", *args, "--out", str(tmp_path))
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-1000:]


def test_unknown_dataset_in_the_library():
    from towerlite.errors import TowerliteError
    from towerlite.evaluation.cases import build_cases

    with pytest.raises(TowerliteError, match="unknown dataset"):
        build_cases("netflix")


@pytest.mark.parametrize("variant", ["fp32", "int8_dynamic"])
def test_served_recommend_gives_the_in_process_numbers(cache, exported, tmp_path_factory, variant):
    """The towers deployed over the evaluation's own catalog, through a real Triton."""
    from towerlite.data import load_dataset
    from towerlite.evaluation.cases import build_cases
    from towerlite.evaluation.metrics import top_k, top_k_overlap
    from towerlite.evaluation.towers import towers_of
    from towerlite.serving.catalog import embed_catalog
    from towerlite.serving.deploy import deploy
    from towerlite.serving.served_quality import bucketed_users, compare, served_buckets
    from towerlite.serving.triton import start_server

    cases = build_cases("movielens", users=40, max_history=5, catalog_items=300)
    items = load_dataset("movielens").items
    items = items[items["item_id"].isin(cases.item_ids)]
    repo = tmp_path_factory.mktemp("eval-repo")
    deploy(exported, repo, variant=variant, items=items, index="exact", flavors=("portable",),
           progress=False)
    (tower,) = towers_of(f"{exported}:{variant}")
    with start_server(repo / "portable", log_path=repo / "triton.log") as server:
        result = compare(cases, tower, server.grpc_url, "grpc")
        buckets = served_buckets(server.grpc_url, "grpc")
    # served and in-process run the same computation (each user alone, padded to its bucket;
    # the catalog in deploy's batches), so they agree up to a float tie at a rank boundary
    assert result["agree"], result
    assert result["same_top10_share"] >= 0.95, result
    assert result["served"]["users"] == 40
    n = len(cases.users)

    # The cut metrics are the full ones where the target is in the top 50: checked over the very
    # embeddings compare() scored, recomputed the same way, so exactly (the same onnxruntime
    # calls on the same inputs are bitwise repeatable on one machine).
    catalog = embed_catalog(cases.item_texts, tower.model(), cache_dir=None, progress=False)
    same = dot_scores(bucketed_users(tower, cases.user_texts, buckets), catalog)
    same_users = per_user(*target_ranks(same, cases.targets, cases.seen))
    full = summarize(same_users)
    assert result["in_process"]["recall@10"] == full["recall@10"], (result["in_process"], full)
    assert result["in_process"]["ndcg@10"] == full["ndcg@10"], (result["in_process"], full)

    # The evaluation's own embeddings (Tower.embed: length-sorted batches of 32) against those:
    # a different batching, so a different computation for int8. Dynamic int8 takes each
    # activation's scale over the whole batch, padding included, and onnxruntime's int8 GEMM
    # rounds differently on AVX2 and on AVX512-VNNI/AMX, so the two agree exactly on some CPUs
    # and not on others (issue 16: asserted equal where the suite was written, on an
    # avx512_vnni machine; 0.15 vs 0.175 on an avx2-only AMD EPYC). Measured there
    # (2026-11-30, 40 users, 300 items): int8 user vectors at cosine ≥ 0.985 between the
    # batchings, 1 user's target crossing rank 10, mean top-10 overlap 0.86 (min 0.6); fp32
    # within 7e-8, nothing moved, overlap 1.0.
    # Tolerances: int8 ≤ 3 of the 40 users' recall@10 (3× the 1 measured) and mean top-10
    # overlap ≥ 0.75 (a drop of 0.25, about twice the 0.14 measured); fp32 ≤ 1 user (a float
    # tie at the rank boundary) and ≥ 0.99.
    moved_max, overlap_min = (1, 0.99) if variant == "fp32" else (3, 0.75)
    batched = dot_scores(tower.embed(cases.user_texts, "u"), tower.embed(cases.item_texts, "i"))
    batched_users = per_user(*target_ranks(batched, cases.targets, cases.seen))
    moved = float(np.abs(batched_users["recall@10"] - same_users["recall@10"]).sum())
    overlap = float(top_k_overlap(top_k(batched, n, cases.seen, 10),
                                  top_k(same, n, cases.seen, 10)).mean())
    batched_recall = summarize(batched_users)["recall@10"]
    detail = dict(moved_users=moved, overlap=overlap, batched=batched_recall,
                  bucketed=full["recall@10"])
    assert moved <= moved_max, detail
    assert abs(batched_recall - full["recall@10"]) <= moved_max / n + 1e-9, detail
    assert overlap >= overlap_min, detail


def test_embedding_cache_is_reused_whatever_chunk_size_asks(tmp_path):
    from towerlite.embedding_cache import cached_embeddings

    texts = [f"text {i}" for i in range(10)]
    calls = []

    def encode(batch):
        calls.append(len(batch))
        return np.array([[float(t.split()[1])] for t in batch], dtype=np.float32)

    first, n1 = cached_embeddings(texts, tmp_path, "k", encode, chunk=4, progress=False)
    again, n2 = cached_embeddings(texts, tmp_path, "k", encode, chunk=8, progress=False)
    assert n1 == 10 and n2 == 0 and calls == [4, 4, 2]
    assert (first == again).all() and first[:, 0].tolist() == list(range(10))


# -- the tiny-model tier: the metrics against brute force, the evaluators on synthetic
# embeddings, a whole evaluation of tiny towers on synthetic cases; no assets.

def test_ranks_and_top_k_match_a_brute_force_ranking():
    from towerlite.evaluation.metrics import top_k

    rng = np.random.default_rng(3)
    users, items = 37, 50
    scores = rng.normal(size=(users, items)).astype(np.float32)  # continuous: no ties
    exclude = [list(rng.choice(items, rng.integers(0, 6), replace=False)) for _ in range(users)]
    targets = [int(rng.choice(sorted(set(range(items)) - set(ex)))) for ex in exclude]
    above, tied = target_ranks(dot_scores(scores, np.eye(items, dtype=np.float32)), targets,
                               exclude, chunk=7)
    for u in range(users):
        candidates = [i for i in range(items) if i not in exclude[u]]
        order = sorted(candidates, key=lambda i: -scores[u, i])
        assert above[u] == order.index(targets[u]) and tied[u] == 0
        got = top_k(lambda a, b: scores[a:b], users, exclude, k=10, chunk=7)[u]
        assert got.tolist() == order[:10]
    v = per_user(above, tied, ks=(1, 10), ndcg_k=10)
    np.testing.assert_allclose(v["recall@10"], above < 10)
    np.testing.assert_allclose(v["recall@1"], above == 0)
    np.testing.assert_allclose(v["mrr"], 1 / (above + 1))
    np.testing.assert_allclose(v["ndcg@10"], np.where(above < 10, 1 / np.log2(above + 2), 0))


def test_tied_scores_count_at_their_expectation_over_random_orders():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 4, size=(12, 30)).astype(np.float32)  # popularity-like: many ties
    targets = rng.integers(0, 30, size=12)
    above, tied = target_ranks(lambda a, b: scores[a:b], targets, [[]] * 12)
    assert tied.sum() > 0
    v = per_user(above, tied, ks=(5,), ndcg_k=5)
    trials = 4000  # each tie broken at random: the mean of the plain metrics
    ranks = np.zeros((trials, 12))
    for t in range(trials):
        noisy = scores + rng.uniform(0, 1e-3, size=scores.shape)
        ranks[t] = (noisy > noisy[np.arange(12), targets][:, None]).sum(1)
    np.testing.assert_allclose(v["recall@5"], (ranks < 5).mean(0), atol=0.04)
    np.testing.assert_allclose(v["mrr"], (1 / (ranks + 1)).mean(0), atol=0.04)
    ndcg = np.where(ranks < 5, 1 / np.log2(ranks + 2), 0).mean(0)
    np.testing.assert_allclose(v["ndcg@5"], ndcg, atol=0.04)


def test_retrieval_and_agreement_on_synthetic_embeddings():
    from towerlite.evaluation.retrieval import agreement, recommended, retrieval

    rng = np.random.default_rng(5)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    items = unit(rng.normal(size=(80, 16)))
    ids = [f"i{j}" for j in range(80)]
    cases = [(f"u{u}", [ids[(u + 1) % 80], ids[(u + 2) % 80]], ids[u]) for u in range(40)]
    near = unit(items[:40] + 0.05 * rng.normal(size=(40, 16)))  # each user next to its target
    best = retrieval(near, items, ids, cases, k=10)
    assert best["recall@10"] == best["mrr"] == 1.0 and best["users"] == 40
    # a user at its first history item: that item is left out, so it cannot take rank 1
    at_history = unit(items[1:41] + 0.01 * rng.normal(size=(40, 16)))
    top = recommended(at_history, items, ids, cases)
    assert not any(ids.index(h) in top[u] for u, (_, hist, _) in enumerate(cases) for h in hist)
    blind = retrieval(unit(rng.normal(size=(40, 16))), items, ids, cases, k=10,
                      teacher_top=recommended(near, items, ids, cases))
    assert blind["recall@10"] < 0.5 and 0 <= blind["teacher_top10_overlap"] < 0.5
    same = retrieval(near, items, ids, cases, teacher_top=recommended(near, items, ids, cases))
    assert same["teacher_top10_overlap"] == 1.0

    groups = ["a"] * 20 + ["b"] * 20
    teacher = unit(rng.normal(size=(40, 16)))
    itself = agreement(teacher, teacher, groups)
    assert set(itself) == {"a", "b", "all"} and itself["a"]["texts"] == 20
    assert itself["all"] == {"spearman": 1.0, "top10_overlap": 1.0, "mean_cosine": 1.0}
    noisy = agreement(teacher, unit(teacher + 0.3 * rng.normal(size=(40, 16))), groups)
    assert 0.3 < noisy["all"]["spearman"] < 1.0 and noisy["all"]["mean_cosine"] < 1.0
    other_space = agreement(teacher, unit(rng.normal(size=(40, 8))), groups)
    assert other_space["all"]["mean_cosine"] is None and abs(other_space["a"]["spearman"]) < 0.5


def test_tiny_towers_and_baselines_are_ranked_on_the_same_cases(tiny_model, tiny_export):
    from conftest import tiny_cases

    from towerlite.evaluation.baselines import popularity
    from towerlite.evaluation.recommend import evaluate
    from towerlite.evaluation.report import markdown
    from towerlite.evaluation.towers import towers_of

    cases = tiny_cases()
    n = len(cases.users)
    towers = towers_of(str(tiny_model)) + towers_of(f"{tiny_export}:fp32") \
        + towers_of(f"{tiny_export}:int8_dynamic")
    report = evaluate(cases, towers, baselines=True, sasrec_epochs=1)
    rows = report["rows"]
    assert list(rows) == ["tiny-bert (PyTorch fp32)", "tiny-bert (ONNX fp32)",
                          "tiny-bert (ONNX int8_dynamic)", "popularity", "co-occurrence",
                          "SASRec"]
    for name, row in rows.items():
        m = row["metrics"]
        assert 0 <= m["recall@10"] <= m["recall@50"] <= 1 and m["users"] == n, name
        assert m["recall@10_ci95"][0] <= m["recall@10"] <= m["recall@10_ci95"][1], name
        assert 0 < m["mrr"] <= 1 and "kept_vs_teacher" not in row, name
        assert row["cold_start"]["users"] == int((cases.target_counts <= 2).sum()), name
    # one model in PyTorch and in ONNX fp32: the same ranking up to a float tie
    torch_row, onnx_row = rows["tiny-bert (PyTorch fp32)"], rows["tiny-bert (ONNX fp32)"]
    assert abs(torch_row["metrics"]["recall@10"] - onnx_row["metrics"]["recall@10"]) <= 1 / n
    counts = np.bincount(np.concatenate(cases.train_likes), minlength=len(cases.item_ids))
    assert (popularity(cases)(0, 2) == counts).all()
    assert rows["SASRec"]["training_users"] == len(cases.train_sequences)
    assert len(rows["SASRec"]["losses"]) == 1
    assert report["cases"]["cold_start_users"] == torch_row["cold_start"]["users"]
    table = markdown(report)
    assert all(f"| {name} |" in table for name in rows)


def test_tiny_model_specs_name_their_towers_and_bad_ones_are_refused(tiny_model, tiny_export,
                                                                     tmp_path):
    from towerlite.errors import TowerliteError
    from towerlite.evaluation.towers import towers_of
    from towerlite.runtime import VARIANT_FILES

    (pytorch,) = towers_of(str(tiny_model))
    assert (pytorch.name, pytorch.runtime, pytorch.max_length) == ("tiny-bert", "PyTorch fp32", 128)
    every = towers_of(str(tiny_export))
    assert [t.runtime for t in every] == [f"ONNX {v}" for v in VARIANT_FILES]
    assert {t.name for t in every} == {"tiny-bert"}  # named after the exported model
    (only_fp32 := tmp_path / "only-fp32").mkdir()
    (only_fp32 / "model.onnx").write_bytes((tiny_export / "model.onnx").read_bytes())
    with pytest.raises(TowerliteError, match="has no int8_dynamic variant; it has fp32"):
        towers_of(f"{only_fp32}:int8_dynamic")
    with pytest.raises(TowerliteError, match="is not a folder"):
        towers_of("/nonexistent/model")
    (empty := tmp_path / "empty").mkdir()
    with pytest.raises(TowerliteError, match="neither ONNX files nor"):
        towers_of(str(empty))
