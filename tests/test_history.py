"""The history user tower (towerlite.sequential, towerlite.sequential_train) on a tiny tower over
synthetic sequences: windows and padding, the ONNX graph and a numpy re-computation rank alike,
validation, the cold floor, the text skip, length buckets, sampled softmax, bf16 steps, the
learning-rate schedule, resume after SIGKILL and with more epochs, the command line's settings.
On the real MovieLens and served: tests/test_history_served.py; the tiny-model tier:
tests/test_history_tiny.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from towerlite.evaluation.sequential import validation
from towerlite.sequential import (
    PAD,
    SKIP_SCALE,
    HistoryConfig,
    SavedTower,
    history_rows,
    item_table,
    onnx_user_vectors,
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
