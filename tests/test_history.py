"""The history user tower (towerlite.sequential): windows and padding, the ONNX graph and a numpy
re-computation rank alike, training resumes after SIGKILL, no held-out user is trained on, and
the served `recommend_history` gives the in-process ranking with clear errors for bad histories.
The unit tests run on a tiny tower over synthetic sequences; the rest read the real MovieLens."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from towerlite.evaluation.sequential import validation
from towerlite.sequential import (
    PAD,
    PROBES_FILE,
    SKIP_SCALE,
    HistoryConfig,
    SavedTower,
    history_rows,
    item_table,
    onnx_user_vectors,
    probe_histories,
    save,
    user_vectors,
)
from towerlite.sequential_train import split_validation, train, windows

TINY = HistoryConfig(dim=16, layers=2, heads=2, max_len=8, dropout=0.1, epochs=3, batch_size=16,
                     lr=3e-3, id_min_likes=2)


def synthetic(n_items=40, users=60, seed=0):
    """Sequences that walk the catalog in steps of 1–3: an order a sequence model can learn."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(users):
        start, steps = rng.integers(n_items), rng.integers(1, 4, size=rng.integers(3, 20))
        seqs.append([int(x) for x in (start + np.cumsum(steps)) % n_items])
    text = rng.normal(size=(n_items, 12)).astype(np.float32)
    return seqs, text


def test_windows_cut_from_the_newest_end_and_pad_left():
    w = windows([[1, 2, 3, 4, 5, 6], [7, 8]], max_len=3)
    assert w.tolist() == [[3, 4, 5, 6], [PAD, 1, 2, 3], [PAD, PAD, 7, 8]]
    rows = history_rows([[1, 2, 3, 4], [5]], max_len=3)
    assert rows.tolist() == [[2, 3, 4], [PAD, PAD, 5]]


def _numpy_user_vectors(model, cfg: HistoryConfig, table: np.ndarray, histories) -> np.ndarray:
    """The sequence model re-computed in numpy from the torch weights (pre-norm blocks,
    positions counted back from the newest item, causal attention over real items)."""
    w = {k: v.detach().numpy().astype(np.float64) for k, v in model.encoder.state_dict().items()}

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def gelu(x):
        from scipy.special import erf

        return 0.5 * x * (1 + erf(x / np.sqrt(2)))

    out = []
    for h in histories:
        h = list(h)[-cfg.max_len:]
        n = len(h)
        positions = w["pos.weight"][np.arange(n - 1, -1, -1)]
        x = table[h, :cfg.dim].astype(np.float64) * np.sqrt(cfg.dim) + positions
        for b in range(cfg.layers):
            p = f"blocks.{b}."
            qkv = norm(x, p + "norm1") @ w[p + "qkv.weight"].T + w[p + "qkv.bias"]
            q, k, v = (qkv[:, i * cfg.dim:(i + 1) * cfg.dim].reshape(n, cfg.heads, -1)
                       .transpose(1, 0, 2) for i in range(3))
            att = q @ k.transpose(0, 2, 1) / np.sqrt(cfg.dim // cfg.heads)
            att = np.where(np.tril(np.ones((n, n), bool)), att, -1e9)
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            heads = (att @ v).transpose(1, 0, 2).reshape(n, cfg.dim)
            x = x + heads @ w[p + "out.weight"].T + w[p + "out.bias"]
            f = gelu(norm(x, p + "norm2") @ w[p + "ff.0.weight"].T + w[p + "ff.0.bias"])
            x = x + f @ w[p + "ff.3.weight"].T + w[p + "ff.3.bias"]
        user = norm(x, "norm")[-1]
        if cfg.text_skip:  # the text skip: the mean of the history's skip rows, appended
            user = np.concatenate([user, table[h, cfg.dim:].astype(np.float64).mean(0)])
        out.append(user)
    return np.array(out)


@pytest.mark.parametrize("use_text, use_ids, text_skip, skip_gain", [
    (True, True, False, 0.0), (True, False, False, 0.0), (False, True, False, 0.0),
    (True, True, True, 0.0), (True, True, True, 20.0)])
def test_torch_onnx_and_numpy_rank_alike(tmp_path, use_text, use_ids, text_skip, skip_gain):
    seqs, text = synthetic()
    cfg = replace(TINY, use_text=use_text, use_ids=use_ids, text_skip=text_skip,
                  skip_gain=skip_gain)
    model, state = train(cfg, seqs, 40, text, progress=False)
    assert len(state.losses) == cfg.epochs and state.losses[-1] < state.losses[0]
    histories = [s[:-1] for s in seqs[:20]] + [[5]]
    table = item_table(model)
    torch_users = user_vectors(model, histories, cfg.max_len)
    numpy_users = _numpy_user_vectors(model, cfg, table, histories)
    # float64 numpy vs float32 torch: the same function up to rounding
    np.testing.assert_allclose(torch_users, numpy_users, atol=2e-4, rtol=1e-4)
    # inference asks the last block the newest position's query alone; training's states
    # (every position, every block) hold the same vector there
    import torch

    with torch.no_grad():
        states, _ = model(torch.as_tensor(history_rows(histories, cfg.max_len)))
    np.testing.assert_allclose(states[:, -1].numpy(), torch_users, atol=1e-5)
    folder = save(tmp_path / "tower", model, cfg, [f"i{j}" for j in range(40)], "synthetic", {})
    saved = SavedTower.load(folder)
    served_table = saved.item_table([f"i{j}" for j in range(40)], text)
    np.testing.assert_allclose(served_table, table, atol=1e-5)
    assert saved.width == table.shape[1] == cfg.dim + (text.shape[1] if text_skip else 0)
    if text_skip:  # the skip part: each item's unit text vector at the learned or fixed scale
        unit = text / np.linalg.norm(text, axis=1, keepdims=True)
        scale = float(np.load(folder / "adapter.npz")["skip_scale"])
        if skip_gain:  # fixed: a score gain of skip_gain per unit of cosine
            assert scale ** 2 == pytest.approx(skip_gain, rel=1e-6)
        else:
            assert scale > 0 and scale != SKIP_SCALE  # learned
        np.testing.assert_allclose(served_table[:, cfg.dim:], scale * unit, atol=1e-5)
    onnx_users = onnx_user_vectors(saved.session(), served_table, histories, cfg.max_len)
    np.testing.assert_allclose(onnx_users, torch_users, atol=1e-4)
    # the ranking: top-10 by numpy equals top-10 by the ONNX graph, where scores are not tied
    a, b = onnx_users @ served_table.T, numpy_users @ table.T
    for sa, sb in zip(a, b):
        top = np.argsort(-sb)[:10]
        gaps = np.abs(np.diff(sb[top]))
        assert list(np.argsort(-sa)[:10]) == list(top) or gaps.min() < 1e-3


def test_logit_adjustment_and_id_dropout_act_in_training_only(tmp_path):
    """Logit adjustment takes each item's training popularity out of what the tower learns (the
    most-liked item ranks lower for the same users); ID dropout scores a share of the warm items
    by text alone in training, and never in the saved, served table."""
    seqs, text = synthetic()
    popular = 7
    seqs = [s[:len(s) // 2] + [popular] + s[len(s) // 2:] for s in seqs]  # liked by everyone
    plain, _ = train(TINY, seqs, 40, text, progress=False)
    cfg = replace(TINY, logit_adjust=1.0, id_dropout=0.5)
    adjusted, state = train(cfg, seqs, 40, text, progress=False)
    assert len(state.losses) == cfg.epochs and state.losses[-1] < state.losses[0]
    histories = [s[:3] for s in seqs]

    def rank_of_popular(model):
        scores = user_vectors(model, histories, TINY.max_len) @ item_table(model).T
        return float(np.mean((scores > scores[:, [popular]]).sum(1)))

    assert rank_of_popular(adjusted) > rank_of_popular(plain) + 1
    table = item_table(adjusted)  # eval mode: every warm item keeps its ID vector
    np.testing.assert_array_equal(item_table(adjusted), table)
    adjusted.train()
    import torch

    with torch.no_grad():
        dropped = adjusted.item_table().numpy()
    adjusted.eval()
    changed = np.abs(dropped - table).max(1) > 0
    warm = adjusted.warm.numpy()
    assert changed.any() and not changed[~warm].any() and changed.sum() < warm.sum()
    folder = save(tmp_path / "tower", adjusted, cfg, [f"i{j}" for j in range(40)], "synthetic", {})
    served = SavedTower.load(folder).item_table([f"i{j}" for j in range(40)], text)
    np.testing.assert_allclose(served, table, atol=1e-5)


def test_validation_keeps_the_best_epoch_and_never_trains_on_its_targets():
    """Validation holds back some training users' last likes (their counts and windows lack
    them), ranks them before training and after every epoch, and returns the best epoch's
    weights; with patience, training stops once no epoch has been better for that many."""
    seqs, text = synthetic(users=200)
    cfg = replace(TINY, epochs=5, validation=0.2)
    trained_on, histories, targets = split_validation(seqs, cfg.validation, cfg.seed)
    assert 20 <= len(targets) <= 60
    assert [len(s) for s in trained_on].count(0) == 0
    held = [r for r, (a, b) in enumerate(zip(seqs, trained_on)) if a != b]
    assert len(held) == len(targets)
    for r, h, t in zip(held, histories, targets):
        assert trained_on[r] == h == seqs[r][:-1] and seqs[r][-1] == t
    sequences, validator = validation(cfg, seqs)
    assert sequences == trained_on
    # validation_users: the same users held back whole, none of their likes trained on
    apart, apart_histories, apart_targets = split_validation(seqs, cfg.validation, cfg.seed,
                                                             whole_users=True)
    assert apart == [s for r, s in enumerate(seqs) if r not in held]
    assert apart_histories == histories and apart_targets.tolist() == targets.tolist()
    assert validation(replace(cfg, validation_users=True), seqs)[0] == apart
    model, state = train(cfg, sequences, 40, text, progress=False, validator=validator)
    assert len(state.validation) == cfg.epochs + 1 and state.epoch == cfg.epochs
    assert state.validation[state.best_epoch] == max(state.validation)
    assert max(state.validation) > state.validation[0]  # training helps on these sequences
    assert validator(model)["recall@10"] == pytest.approx(max(state.validation), abs=1e-5)
    # ranked within the target's domain (rows 0–19, 20–39): fewer candidates, never a worse rank
    _, within = validation(cfg, seqs, domains=[(0, 20), (20, 40)])
    assert within(model)["recall@10"] >= validator(model)["recall@10"]
    # nothing to learn at lr 0: no epoch beats the untrained tower, 2 epochs of patience
    stuck, stopped = train(replace(cfg, lr=0.0, patience=2), sequences, 40, text, progress=False,
                           validator=validator)
    assert stopped.epoch == 2 and stopped.best_epoch == 0 and len(stopped.validation) == 3
    assert validation(TINY, seqs) == (seqs, None)  # no validation: every like trains


def test_cold_floor_keeps_the_best_epoch_whose_cold_targets_score_at_least_the_untrained():
    """The validator scores the cold targets apart (their likes counted in the sequences
    trained on, the target's own held back); with cold_floor the kept epoch is the best one
    among those whose cold Recall@10 is at least the untrained tower's."""
    seqs, text = synthetic(users=200)
    cfg = replace(TINY, epochs=5, validation=0.2, cold_floor=True)
    trained_on, _, targets = split_validation(seqs, cfg.validation, cfg.seed)
    counts = np.bincount(np.concatenate(trained_on), minlength=40)[targets]
    cold_max = int(np.median(counts))  # half the targets cold: these synthetic items are all warm
    sequences, validator = validation(cfg, seqs, cold_max=cold_max)
    model, state = train(cfg, sequences, 40, text, progress=False, validator=validator)
    scores = validator(model)
    assert scores["cold_targets"] == int((counts <= cold_max).sum()) and scores["targets"] == len(
        targets) and 0 < scores["cold_targets"] < len(targets)
    assert state.validation_targets == {"targets": len(targets),
                                        "cold_targets": scores["cold_targets"]}
    assert scores["cold_recall@10"] == pytest.approx(state.validation_cold[state.best_epoch],
                                                     abs=1e-5)
    assert len(state.validation_cold) == len(state.validation) == cfg.epochs + 1
    allowed = [e for e, c in enumerate(state.validation_cold) if c >= state.validation_cold[0]]
    assert state.best_epoch == max(allowed, key=lambda e: (state.validation[e], -e))
    # the untrained tower's cold targets all found, no later epoch's: it is kept, though later
    # epochs score better over all targets (the test above)
    calls = []

    def floor_above_all(model):
        calls.append(model)
        return {**validator(model), "cold_recall@10": 1.0 if len(calls) == 1 else 0.0}

    _, floored = train(cfg, sequences, 40, text, progress=False, validator=floor_above_all)
    assert max(floored.validation) > floored.validation[0]
    assert floored.best_epoch == 0 and floored.validation_cold[1:] == [0.0] * cfg.epochs


def test_a_fixed_text_skip_starts_from_the_historys_mean_text_similarity():
    """With skip_gain, the learned part of the user vector starts at zero: the untrained tower
    scores each item by skip_gain × cosine(the mean of the history's unit text vectors, the
    item's), the zero-shot similarity training (with validation) moves from."""
    from towerlite.sequential import build_model

    seqs, text = synthetic()
    cfg = replace(TINY, text_skip=True, skip_gain=20.0)
    model = build_model(cfg, 40, text, np.ones(40, bool)).eval()
    histories = [s[:-1] for s in seqs[:20]]
    users = user_vectors(model, histories, cfg.max_len)
    assert not users[:, :cfg.dim].any()
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    expected = np.stack([unit[h[-cfg.max_len:]].mean(0) for h in histories]) @ unit.T * 20.0
    np.testing.assert_allclose(users @ item_table(model).T, expected, atol=1e-4)
    # the report's zero-shot row is this untrained tower, without a tower
    from types import SimpleNamespace

    from towerlite.evaluation.sequential import text_mean

    zero_shot = text_mean(SimpleNamespace(seen=histories), text, cfg.max_len)
    np.testing.assert_allclose(zero_shot(0, 20) * 20.0, expected, atol=1e-4)


def test_length_buckets_cover_every_window_once_and_trimming_keeps_the_states():
    """Batches by length hold every window once, alike in length; cutting off the columns that
    are padding in every window of a batch leaves each real position's state as it was."""
    import torch

    from towerlite.sequential import build_model
    from towerlite.sequential_train import batches

    seqs, text = synthetic(users=200)
    seqs += [s[:2] for s in seqs]  # short histories beside long ones, as Book-Crossing's
    data = windows(seqs, TINY.max_len)
    lengths = (data >= 0).sum(1)
    plain, bucketed = (batches(lengths, 16, 0, 3, by) for by in (False, True))
    for found in (plain, bucketed):
        assert sorted(np.concatenate(found).tolist()) == list(range(len(data)))
    assert [b.tolist() for b in batches(lengths, 16, 0, 3, True)] == [b.tolist() for b in bucketed]

    def spread(found):
        return np.mean([np.ptp(lengths[b]) for b in found])

    assert spread(bucketed) < spread(plain) / 2
    model = build_model(TINY, 40, text, np.ones(40, bool)).eval()
    batch = torch.as_tensor(data[bucketed[-1]])[:, :-1]
    first = int((batch >= 0).any(0).float().argmax())
    assert first > 0 or (batch >= 0).all(0).any()
    with torch.no_grad():
        whole, _ = model(batch)
        cut, _ = model(batch[:, first:])
    real = (batch >= 0)[:, first:]
    np.testing.assert_allclose(cut[real].numpy(), whole[:, first:][real].numpy(), atol=1e-5)


def test_bucketed_batches_weigh_every_position_the_same(tmp_path):
    """Batched by length, a batch's loss is its positions' sum over the epoch's mean positions
    per batch: at lr 0 an epoch's loss is the mean over every position, as one batch of all
    windows gives it — not the mean of batch means, which weighs a position in a batch of short
    windows above one among long windows."""
    import torch

    from towerlite.sequential import WEIGHTS_FILE
    from towerlite.sequential_train import batches, full_loss

    rng = np.random.default_rng(0)
    long = [[(s + k) % 40 for k in range(9)] for s in range(100)]  # steps of 1: learnable
    short = [rng.integers(0, 40, 2).tolist() for _ in range(300)]  # random pairs: not
    seqs, text = long + short, rng.normal(size=(40, 12)).astype(np.float32)
    cfg = replace(TINY, epochs=8)
    model, _ = train(cfg, seqs, 40, text, progress=False)
    folder = save(tmp_path / "tower", model, cfg, [f"i{j}" for j in range(40)], "synthetic", {})
    still = replace(cfg, lr=0.0, dropout=0.0, epochs=1, bucket_by_length=True)
    model, state = train(still, seqs, 40, text, progress=False, start=folder / WEIGHTS_FILE)
    data = torch.as_tensor(windows(seqs, cfg.max_len))

    def loss(rows):
        with torch.no_grad():
            return float(full_loss(still, model, data[rows], torch.zeros(40), [(0, 40)]))

    everything = loss(np.arange(len(data)))
    batch_means = np.mean([loss(b) for b in batches((data >= 0).sum(1).numpy(), cfg.batch_size,
                                                    cfg.seed, 0, True)])
    assert abs(batch_means - everything) > 0.2  # short windows' positions cost more
    assert state.losses[0] == pytest.approx(everything, abs=2e-3)


def test_a_sampled_softmax_step_computes_only_its_rows_of_the_table(tmp_path):
    """With negatives the model builds the item vectors of the batch's and the sample's rows
    alone (Book-Crossing's whole 271k-book table was most of a step): the same states and rows
    as from the whole table; such a run learns, and its checkpoint leaves out the derived
    buffers (the whitened and unit text vectors: the catalog's size × the text width each)."""
    import torch

    from towerlite.sequential import DERIVED, build_model

    seqs, text = synthetic(users=120)
    cfg = replace(TINY, text_skip=True, skip_gain=20.0)
    model = build_model(cfg, 40, text, np.arange(40) % 3 > 0).eval()
    batch = torch.as_tensor(windows(seqs, cfg.max_len)[:16])
    sample = torch.tensor([3, 3, 17, 39])
    needed = torch.unique(torch.cat([batch[batch >= 0], sample]))
    assert len(needed) < 40  # a proper subset, or the check below proves nothing
    with torch.no_grad():
        states, table = model(batch[:, :-1], needed)
        whole_states, whole_table = model(batch[:, :-1])
    real = batch[:, :-1] >= 0
    np.testing.assert_allclose(states[real].numpy(), whole_states[real].numpy(), atol=1e-5)
    np.testing.assert_allclose(table.numpy(), whole_table[needed].numpy(), atol=1e-6)
    sampled = replace(cfg, negatives=12, epochs=4)
    ckpt = tmp_path / "ckpt.pt"
    trained, state = train(sampled, seqs, 40, text, checkpoint=ckpt, progress=False)
    assert state.losses[-1] < state.losses[0]
    saved = torch.load(ckpt, weights_only=False)
    assert not set(saved["model"]) & set(DERIVED) and "ids.weight" in saved["model"]
    # the ID vectors under their own (sparse) optimizer, which the checkpoint resumes too
    assert trained.ids.sparse and len(saved["opt"]) == 2
    _, resumed = train(replace(sampled, epochs=5), seqs, 40, text, checkpoint=ckpt, progress=False)
    assert resumed.losses[:4] == state.losses and len(resumed.losses) == 5
    # negatives as many as the items: the full softmax, dense ID gradients, one optimizer
    full, state = train(replace(cfg, negatives=40, epochs=2), seqs, 40, text, progress=False)
    assert not full.ids.sparse and len(state.losses) == 2


def test_cold_items_score_by_text_alone(tmp_path):
    seqs, text = synthetic()
    model, _ = train(TINY, seqs, 40, text, progress=False)
    folder = save(tmp_path / "tower", model, TINY, [f"i{j}" for j in range(40)], "synthetic", {})
    saved = SavedTower.load(folder)
    new_text = np.random.default_rng(5).normal(size=(1, 12)).astype(np.float32)
    row = saved.item_table(["never-seen"], new_text)
    a = np.load(folder / "adapter.npz")
    np.testing.assert_allclose(
        row, ((new_text - a["mean"]) @ a["white"]) @ a["weight"].T + a["bias"], atol=1e-5)
    ids_only = replace(TINY, use_text=False)
    m2, _ = train(ids_only, seqs, 40, None, progress=False)
    f2 = save(tmp_path / "ids", m2, ids_only, [f"i{j}" for j in range(40)], "synthetic", {})
    assert not SavedTower.load(f2).item_table(["never-seen"], None).any()  # an ID model cannot


RESUME_SCRIPT = """
import logging, sys, numpy as np, torch
from pathlib import Path
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_history import TINY, synthetic
from dataclasses import replace
from pathlib import Path
from towerlite.evaluation.sequential import validation
from towerlite.sequential_train import train
seqs, text = synthetic()
# the kept epoch's weights resume too, and the schedule's step with them
cfg = replace(TINY, epochs=6, validation=0.2, lr_schedule="cosine")
seqs, validator = validation(cfg, seqs)
model, state = train(cfg, seqs, 40, text, checkpoint=Path(sys.argv[1]), progress=False,
                     validator=validator)
np.save(sys.argv[2], model.encoder.pos.weight.detach().numpy())
print("losses", state.losses, "validation", state.validation, "best", state.best_epoch)
"""


@pytest.mark.parametrize("schedule, rates", [
    ("constant", [1.0, 1.0, 1.0, 1.0]), ("cosine", [1.0, 0.5, 0.0, 0.0])])
def test_the_learning_rate_follows_its_schedule_over_the_run(schedule, rates):
    from towerlite.sequential import build_model
    from towerlite.sequential_train import Optimizers

    cfg = replace(TINY, lr_schedule=schedule, negatives=8)  # two optimizers: dense and sparse
    seqs, text = synthetic()
    opt = Optimizers(cfg, build_model(cfg, 40, text, np.ones(40, bool)))
    assert len(opt.parts) == 2
    for progress, rate in zip([0.0, 0.5, 1.0, 1.5], rates):
        opt.set_lr(cfg, progress)
        assert all(g["lr"] == pytest.approx(cfg.lr * rate, abs=1e-12)
                   for o in opt.parts for g in o.param_groups)


@pytest.mark.parametrize("negatives", [0, 8])  # full softmax; sampled, with SparseAdam
def test_bf16_training_steps_as_fp32_does_and_keeps_fp32_weights(negatives):
    """precision=bf16 computes each step's forward in bfloat16: its first loss is fp32's to
    bf16's precision, it learns the order synthetic() walks as fp32 does (the next item ranked
    as high) and what it keeps and serves is float32."""
    seqs, text = synthetic()
    cfg = replace(TINY, epochs=6, negatives=negatives)
    full, full_state = train(cfg, seqs, 40, text, progress=False)
    half, half_state = train(replace(cfg, precision="bf16"), seqs, 40, text, progress=False)
    assert half_state.losses[0] == pytest.approx(full_state.losses[0], rel=0.02)
    assert half_state.losses[-1] < half_state.losses[0] - 0.2
    assert half_state.losses != full_state.losses  # the steps did run in bf16
    assert {p.dtype for p in half.parameters()} == {full.encoder.pos.weight.dtype}
    histories, nexts = [s[:-1] for s in seqs], [s[-1] for s in seqs]

    def mean_rank(model):  # of each sequence's last item after the rest; chance: 19.5 of 40
        scores = user_vectors(model, histories, cfg.max_len) @ item_table(model).T
        return float((scores > scores[np.arange(len(seqs)), nexts][:, None]).sum(1).mean())

    assert mean_rank(half) < 15 and abs(mean_rank(half) - mean_rank(full)) < 1


def test_training_resumes_after_sigkill(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT.format(tests=os.path.dirname(__file__)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpt = tmp_path / "ckpt.pt"
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(tmp_path / "a.npy")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not ckpt.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stderr.read().decode()[-2000:]
    import torch

    done = torch.load(ckpt, weights_only=False)["state"]["epoch"]
    assert 1 <= done <= 6
    resumed = subprocess.run([sys.executable, str(script), str(ckpt), str(tmp_path / "a.npy")],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {ckpt} after epoch {done}" in resumed.stderr
    fresh = subprocess.run([sys.executable, str(script), str(tmp_path / "other.pt"),
                            str(tmp_path / "b.npy")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    # the interrupted-and-resumed run ends where the uninterrupted one does
    assert resumed.stdout.strip() == fresh.stdout.strip()
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), atol=1e-6)


def test_a_finished_run_given_more_epochs_trains_on_as_one_longer_run(tmp_path):
    """Under a constant rate the checkpoint's key leaves out epochs and patience: a run of 2
    epochs rerun with 4 resumes after its second and ends where a run of 4 does; under cosine
    (every step's rate depends on the run's length) it is another run; a checkpoint past the
    epochs asked for is refused, not returned as that shorter run."""
    from towerlite.distill.history import HistoryRun
    from towerlite.errors import TowerliteError

    seqs, text = synthetic()
    ckpt = tmp_path / "ckpt.pt"
    train(replace(TINY, epochs=2), seqs, 40, text, checkpoint=ckpt, progress=False)
    resumed, resumed_state = train(replace(TINY, epochs=4), seqs, 40, text, checkpoint=ckpt,
                                   progress=False)
    whole, whole_state = train(replace(TINY, epochs=4), seqs, 40, text, progress=False)
    assert len(resumed_state.losses) == 4 and resumed_state.losses == whole_state.losses
    np.testing.assert_allclose(item_table(resumed), item_table(whole), atol=1e-6)
    with pytest.raises(TowerliteError, match="holds 4 epochs"):
        train(replace(TINY, epochs=3), seqs, 40, text, checkpoint=ckpt, progress=False)

    def key(**settings):
        return HistoryRun("movielens", "m", tmp_path, replace(TINY, **settings)).checkpoint().name

    assert key(epochs=2) == key(epochs=4) == key(epochs=4, patience=3)
    assert key(epochs=2, lr_schedule="cosine") != key(epochs=4, lr_schedule="cosine")
    assert key(epochs=2) != key(epochs=2, lr=1e-3) != key(epochs=2, precision="bf16")


# -- real data -----------------------------------------------------------------------------------

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


# -- the tiny-model tier: a history tower over a tiny text model's item vectors, evaluated on
# synthetic cases; the command line's config parsing. No assets.

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


@pytest.mark.parametrize("sets, message", [
    (["layers=two"], "layers takes an integer, not 'two'"),
    (["lr=fast"], "lr takes a number, not 'fast'"),
    (["colour=red"], "not FIELD=VALUE with a HistoryConfig field"),
    (["use_text=false"], "not FIELD=VALUE with a HistoryConfig field"),
    (["epochs"], "not FIELD=VALUE with a HistoryConfig field"),
    (["dim=15"], "dim must be a multiple of heads"),
    (["epochs=0"], "epochs at least 1"),
    (["logit_adjust=-1"], "logit_adjust is a number ≥ 0"),
    (["lr_schedule=linear"], "lr_schedule is one of constant, cosine, not 'linear'"),
    (["precision=fp16"], "precision is one of fp32, bf16, not 'fp16'"),
    (["id_dropout=1"], r"id_dropout a share in \[0, 1\)"),
    (["cold_floor=true"], "cold_floor and validation_users with validation > 0"),
    (["validation_users=true"], "cold_floor and validation_users with validation > 0"),
])
def test_history_settings_are_parsed_and_bad_ones_refused(sets, message):
    import argparse

    from towerlite.distill.history import add_arguments, config_of
    from towerlite.errors import TowerliteError

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def parse(*argv):
        return config_of(parser.parse_args([a for s in argv for a in ("--set", s)]))

    with pytest.raises(TowerliteError, match=message):
        parse(*sets)
    cfg = parse("dim=48", "heads=4", "lr=0.01", "dropout=0", "seed=3")
    assert (cfg.dim, cfg.heads, cfg.lr, cfg.dropout, cfg.seed) == (48, 4, 0.01, 0.0, 3)
    ids_only = config_of(parser.parse_args(["--ids-only"]))
    assert not ids_only.use_text and ids_only.use_ids and ids_only.id_min_likes == 1
    assert config_of(parser.parse_args(["--text-only"])).kind == "text only"
    skip = config_of(parser.parse_args(["--set", "text_skip=true"]))
    assert skip.text_skip and skip.kind == "text + ID + text skip"
    with pytest.raises(TowerliteError, match="text_skip appends the items' text embeddings"):
        config_of(parser.parse_args(["--ids-only", "--set", "text_skip=yes"]))


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
