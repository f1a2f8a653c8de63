"""Interaction fine-tuning on the real MovieLens-1M and Book-Crossing interactions: the split
(no held-out user or target reaches training), the batches, the loss by hand, a few steps that
lower it, resume after SIGKILL, the output going through export, and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli


def finetune_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "towerlite", "finetune", "--preset", "tiny", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def movielens(cache):
    from towerlite.distill.finetune.interactions import load_interactions

    return load_interactions("movielens", 0)


@pytest.fixture(scope="module")
def tiny_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "run"
    proc = subprocess.run(finetune_cmd(out), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_split_is_the_eval_split(cache, movielens):
    """Training users are exactly the non-held-out users with two likes; no evaluated user
    (and so no evaluation target) is among them; likes are read in eval's order."""
    from towerlite.data import load_dataset
    from towerlite.data.splits import is_heldout_user, ordered_likes
    from towerlite.evaluation.cases import build_cases

    likes = ordered_likes(load_dataset("movielens"), 0)
    expected = {u for u, items in likes.items() if len(items) >= 2 and not is_heldout_user(u)}
    assert set(movielens.users) == expected and len(movielens.users) == len(movielens.likes)
    evaluated = set(build_cases("movielens", users=0).users)
    assert evaluated and not evaluated & set(movielens.users)
    row = {item: r for r, item in enumerate(movielens.item_ids)}
    for user, liked in zip(movielens.users[:50], movielens.likes[:50]):
        assert [row[i] for i in likes[user]] == liked.tolist()


def test_batches_cut_each_history_before_its_positive(movielens):
    from towerlite.data.render import join_user_text
    from towerlite.distill.finetune.interactions import step_batch

    batch = step_batch([movielens], [1.0], 16, 10, seed=0, step=3)
    again = step_batch([movielens], [1.0], 16, 10, seed=0, step=3)
    # pure of (seed, step)
    assert batch.user_texts == again.user_texts and (batch.positives == again.positives).all()
    assert len(set(batch.users.tolist())) == 16
    for u, text, pos, seen in zip(batch.users, batch.user_texts, batch.positives, batch.seen):
        liked = movielens.likes[u].tolist()
        cut = liked.index(pos)
        assert cut >= 1 and seen == set(liked[:cut]) and pos not in seen
        assert text == join_user_text([movielens.item_texts[r] for r in liked[:cut]], 10)
        assert text.startswith(movielens.item_texts[liked[cut - 1]])  # newest first


def test_valid_negatives_and_log_q_by_hand():
    from towerlite.distill.finetune.interactions import Batch, _log_q, valid_negatives

    batch = Batch("x", np.array([0, 1]), ["a", "b"], np.array([5, 7]), [{1, 7}, {2}])
    ok = valid_negatives(batch, np.array([5, 7, 2, 9]))
    assert ok.tolist() == [[False, False, True, True], [True, False, False, True]]
    # user A: positives at positions 1..2 → items 1, 2 (½ each); user B: item 2.
    # q = mean over users.
    q = np.exp(_log_q([np.array([0, 1, 2]), np.array([3, 2])], 4))
    np.testing.assert_allclose(q, [0, 0.25, 0.75, 0], atol=1e-9)


def test_info_nce_by_hand():
    import torch

    from towerlite.distill.losses import info_nce

    rng = np.random.default_rng(0)
    u, i, bank = (torch.nn.functional.normalize(
        torch.tensor(rng.normal(size=s), dtype=torch.float32), dim=-1)
        for s in ((3, 4), (3, 4), (2, 4)))
    valid = np.array([[False, True, False], [True, False, True], [True, True, False]])
    bank_valid = np.array([[True, False], [True, True], [False, True]])
    log_q = np.array([-1.0, -2.0, -3.0], dtype=np.float32)
    t = 0.1
    got = info_nce(u, i, t, valid, log_q, bank, bank_valid, symmetric=True).item()

    un, inn, bn = u.numpy(), i.numpy(), bank.numpy()
    v = valid | np.eye(3, dtype=bool)

    def ce(logits, mask, k):
        z = np.where(mask, logits, -np.inf)
        return -(z[k] - np.log(np.exp(z[np.isfinite(z)]).sum()))

    u2i = [ce(np.concatenate([un[k] @ inn.T / t - log_q, un[k] @ bn.T / t]),
              np.concatenate([v[k], bank_valid[k]]), k) for k in range(3)]
    i2u = [ce(inn[k] @ un.T / t, v[:, k], k) for k in range(3)]
    assert got == pytest.approx(0.5 * (np.mean(u2i) + np.mean(i2u)), rel=1e-5)
    plain = info_nce(u, i, t, valid, symmetric=False).item()
    assert plain == pytest.approx(np.mean([ce(un[k] @ inn.T / t, v[k], k) for k in range(3)]),
                                  rel=1e-5)


def test_a_few_steps_lower_the_loss_on_real_batches(movielens, tmp_path):
    import torch

    from towerlite.distill.finetune.config import PRESETS, FinetuneConfig
    from towerlite.distill.finetune.train import build, make_step
    from towerlite.distill.train import Dist, run_steps

    cfg = FinetuneConfig.from_json({**PRESETS["tiny"], "datasets": {"movielens": 1.0}, "steps": 10,
                                    "bank_size": 0, "lr": 3e-4})
    module, tok = build(cfg)
    step = make_step(module, tok, [movielens], cfg, {}, Dist())

    def seen_loss():  # the loss on the first four training batches
        with torch.no_grad():
            return np.mean([step(module, s)[0].item() for s in range(4)])

    before = seen_loss()
    run_steps(module, cfg.steps, step, cfg, tmp_path / "ckpt.pt", "k", Dist())
    assert seen_loss() < before - 0.05


def test_long_histories_are_truncated_oldest_first(movielens):
    from towerlite.distill.finetune.config import PRESETS, FinetuneConfig
    from towerlite.distill.finetune.interactions import step_batch
    from towerlite.distill.finetune.train import build, make_step
    from towerlite.distill.train import Dist

    cfg = FinetuneConfig.from_json({**PRESETS["tiny"], "history_items": 200, "max_length": 24,
                                    "datasets": {"movielens": 1.0}})
    module, tok = build(cfg)
    loss, entry = make_step(module, tok, [movielens], cfg, {}, Dist())(module, 0)
    assert np.isfinite(loss.item()) and entry["dataset"] == "movielens"
    batch = step_batch([movielens], [1.0], cfg.batch_size, cfg.history_items, cfg.seed, 0)
    longest = max(batch.user_texts, key=len)
    ids = tok([longest], truncation=True, max_length=cfg.max_length)["input_ids"][0]
    assert len(tok(longest)["input_ids"]) > cfg.max_length and len(ids) == cfg.max_length
    # the kept end is the newest items
    assert ids[1:-1] == tok(longest)["input_ids"][1:cfg.max_length - 1]


def test_empty_training_split_is_a_clear_error(cache, monkeypatch):
    import towerlite.data.splits as splits
    from towerlite.distill.finetune.interactions import load_interactions
    from towerlite.errors import TowerliteError

    monkeypatch.setattr(splits, "is_heldout_user", lambda user: True)
    with pytest.raises(TowerliteError, match="training split is empty"):
        load_interactions("movielens", 0)


def test_report_table_and_model_folder(tiny_run):
    from sentence_transformers import SentenceTransformer

    from towerlite.models import SentenceEncoder

    out, proc = tiny_run
    report = json.loads((out / "finetune_report.json").read_text())
    assert report["training"]["steps"] == 12 and len(report["training"]["history"]) == 12
    assert sum(d["steps"] for d in report["data"].values()) == 12
    assert report["data"]["movielens"]["training_users"] > 5000
    rows = report["evaluation"]
    assert set(rows) == {"teacher", "student-start (start)", "fine-tuned"}
    for row in rows.values():
        assert 0 <= row["retrieval"]["recall@10"] <= 1
        assert row["agreement"]["all"]["spearman"] <= 1.0
    assert "| fine-tuned |" in proc.stdout
    texts = ["[movie] Heat (1995). Action|Crime|Thriller",
             "[book] Clara Callan by Richard Bruce Wright"]
    ours = SentenceEncoder(str(out / "model")).encode(texts)
    assert ours.shape == (2, 384)
    reference = SentenceTransformer(str(out / "model"), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    start = SentenceEncoder("student-start").encode(texts)
    assert np.abs(ours - start).max() > 1e-3  # it did change


def test_fine_tuned_folder_exports_unchanged_at_its_own_length(tiny_run, tmp_path):
    out, _ = tiny_run
    proc = run_cli("export", "--model", str(out / "model"), "--out", str(tmp_path / "ex"),
                   "--variants", "fp32", "--no-speed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "ex" / "export_report.json").read_text())
    assert report["variants"]["fp32"]["passed"] and not report["failures"]
    # trained at 64 tokens (the tiny preset), exported and so served at 64, not the default 128
    assert report["max_length"] == 64


def test_resume_after_interruption_gives_the_same_weights(tiny_run, tmp_path):
    from safetensors.numpy import load_file

    out, _ = tiny_run
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "finetune.pt"
    cmd = finetune_cmd(run, "--set", "evaluate=false")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    state = torch.load(ckpt, weights_only=False)
    assert 0 < state["step"] < 12, "the run was not interrupted mid-training"
    assert state["state"]["banks"]  # the negatives bank is part of the resume point
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt} at step {state['step']}" in again.stderr
    a = load_file(out / "model" / "model.safetensors")
    b = load_file(run / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_every_preset_is_a_valid_config():
    from towerlite.distill.finetune.config import PRESETS, FinetuneConfig, check

    for fields in PRESETS.values():
        check(FinetuneConfig.from_json(dict(fields)))


def test_two_process_torchrun(cache, tmp_path):
    import os

    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                           "towerlite.distill.finetune.cli", "--preset", "tiny",
                           "--out", str(tmp_path / "ddp"), "--set", "evaluate=false"],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "finetune_report.json").read_text())
    assert report["world_size"] == 2 and len(report["training"]["history"]) == 12
    assert all(np.isfinite(h["loss"]) for h in report["training"]["history"])


# -- the tiny-model tier: fine-tuning a 2-layer random BERT (tests/conftest.py) on synthetic
# interactions; no assets.

def _tiny_interactions(n_items=40, users=60, seed=0):
    """Synthetic `Interactions`: item texts from the tiny vocabulary, users whose likes walk
    the catalog in steps of 1–3 (the next item follows from the last ones)."""
    from conftest import tiny_sentences

    from towerlite.distill.finetune.interactions import Interactions, _log_q

    rng = np.random.default_rng(seed)
    texts = [f"[movie] {t}" for t in tiny_sentences(n_items, seed=seed + 1, words=4)]
    likes = []
    for _ in range(users):
        start, steps = rng.integers(n_items), rng.integers(1, 4, size=rng.integers(2, 9))
        walk = list(dict.fromkeys(int(x) for x in (start + np.cumsum(steps)) % n_items))
        likes.append(np.array(walk if len(walk) >= 2 else walk * 2, dtype=np.int64))
    return Interactions("movielens", [f"m{i}" for i in range(n_items)], texts,
                        [f"u{i}" for i in range(users)], likes, _log_q(likes, n_items))


def _tiny_config(tiny_model, **fields):
    from towerlite.distill.finetune.config import FinetuneConfig

    return FinetuneConfig(start=str(tiny_model), datasets={"movielens": 1.0}, batch_size=8,
                          max_length=48, lr=1e-3, **fields)


def test_tiny_fine_tuning_lowers_the_loss_with_the_embeddings_frozen(tiny_model, tmp_path):
    from towerlite.distill.finetune.train import build, make_step
    from towerlite.distill.train import Dist, run_steps

    data = _tiny_interactions()
    cfg = _tiny_config(tiny_model, steps=16, bank_size=16, bank_refresh=4, checkpoint_every=100)
    module, tok = build(cfg)
    frozen = module.transformer.embeddings.word_embeddings.weight.detach().clone()
    assert not any(p.requires_grad for p in module.transformer.embeddings.parameters())
    state = {}
    step = make_step(module, tok, [data], cfg, state, Dist())

    def seen_loss():  # the loss on the first four training batches
        import torch

        with torch.no_grad():
            return np.mean([step(module, s)[0].item() for s in range(4)])

    before = seen_loss()
    result = run_steps(module, cfg.steps, step, cfg, tmp_path / "ckpt.pt", "k", Dist(),
                       state=state)
    assert [h["dataset"] for h in result["history"]] == ["movielens"] * cfg.steps
    assert all(np.isfinite(h["loss"]) for h in result["history"])
    assert seen_loss() < before - 0.05
    assert (module.transformer.embeddings.word_embeddings.weight == frozen).all()
    bank = state["banks"]["movielens"]  # the whole (small) catalog, re-encoded every 4 steps
    assert len(bank["rows"]) == 16 and bank["step"] % cfg.bank_refresh == 0


def test_tiny_fine_tuning_resumed_after_an_interruption_gives_the_same_weights(tiny_model,
                                                                              tmp_path):
    from towerlite.distill.finetune.train import build, make_step
    from towerlite.distill.train import Dist, run_steps

    data = _tiny_interactions(seed=1)
    cfg = _tiny_config(tiny_model, steps=10, bank_size=16, bank_refresh=3, checkpoint_every=4)

    def fine_tune(ckpt, kill_at=None):
        module, tok = build(cfg)
        state = {}
        step_fn = make_step(module, tok, [data], cfg, state, Dist())

        def step(model, k):
            if k == kill_at:
                raise KeyboardInterrupt  # as if killed: the last checkpoint is at step 4
            return step_fn(model, k)

        return module, run_steps(module, cfg.steps, step, cfg, ckpt, "k", Dist(), state=state)

    whole, _ = fine_tune(tmp_path / "whole.pt")
    with pytest.raises(KeyboardInterrupt):
        fine_tune(tmp_path / "resumed.pt", kill_at=6)
    import torch

    saved = torch.load(tmp_path / "resumed.pt", weights_only=False)
    assert saved["step"] == 4 and saved["state"]["banks"]  # the bank is part of the resume point
    resumed, result = fine_tune(tmp_path / "resumed.pt")
    assert result["resumed_at_step"] == 4 and len(result["history"]) == cfg.steps
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


@pytest.mark.parametrize("args, message", [
    (["--set", 'datasets={"netflix": 1}'], "datasets must weight some of"),
    (["--set", 'datasets={}'], "datasets must weight some of"),
    (["--steps", "0"], "steps must be at least 1"),
    (["--set", "temperature=0"], "temperature must be in"),
    (["--set", "layers=[0, 9]"], "out of range for the 2-layer start"),
    (["--set", "lr_typo=1"], "unknown config field"),
    (["--start", "/nonexistent/model"], "not found"),
])
def test_tiny_bad_input_fails_before_any_data_is_read(tiny_model, tmp_path, capsys, args,
                                                      message):
    """The finetune command line with a tiny start model: one line and exit 1, from the checks
    before the interactions are loaded (a data read would fail here: no asset cache)."""
    from towerlite.distill.finetune.cli import DESCRIPTION, add_arguments, command
    from towerlite.entry import standalone

    argv = ["--preset", "tiny", "--start", str(tiny_model), "--out", str(tmp_path / "out"),
            "--set", "layers=[0, 1]", *args]  # the tiny preset's [0, 5] are MiniLM's layers
    assert standalone("towerlite finetune", DESCRIPTION, add_arguments, command, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("towerlite: error: "), err


def test_tiny_base_of_the_bad_inputs_is_valid(tiny_model, tmp_path):
    """The command line the cases above start from passes the checks: each fails by its own
    mistake."""
    import argparse

    from towerlite.distill.cli import build_config
    from towerlite.distill.finetune.cli import add_arguments
    from towerlite.distill.finetune.config import PRESETS, FinetuneConfig
    from towerlite.distill.finetune.train import preflight

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--preset", "tiny", "--start", str(tiny_model),
                              "--out", str(tmp_path / "out"), "--set", "layers=[0, 1]"])
    cfg = build_config(args, PRESETS, FinetuneConfig, ("out", "start", "steps"))
    assert preflight(cfg) == str(tiny_model.resolve())
