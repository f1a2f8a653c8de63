"""Training the history user tower (towerlite.sequential): windows of the training users'
sequences, one epoch's batches, the two losses (full softmax over a domain's items, or sampled
with a shared uniform sample of negatives), and `Trainer`, one run's state from setup through
its epochs to the weights it keeps — resumable after every epoch, under torchrun as DDP, the
kept epoch chosen on a validation split when there is one.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import TowerliteError
from .sequential import (
    PAD,
    HistoryConfig,
    _torch,
    build_model,
    load_trained,
    load_weights,
    sampled,
    trained_state,
)

log = logging.getLogger(__name__)


def windows(sequences: list[list[int]], max_len: int) -> np.ndarray:
    """Every training sequence cut from its newest end into windows of max_len + 1 rows
    (inputs are a window's first max_len, targets its last max_len), left-padded with PAD."""
    out = []
    for seq in sequences:
        for stop in range(len(seq), 1, -max_len):
            part = seq[max(0, stop - max_len - 1):stop]
            out.append([PAD] * (max_len + 1 - len(part)) + list(part))
    return np.asarray(out, np.int64).reshape(-1, max_len + 1)


def batches(lengths: np.ndarray, size: int, seed: int, epoch: int,
            by_length: bool = False) -> list[np.ndarray]:
    """One epoch's batches of window indices, a function of (seed, epoch) so a resumed run
    reads what an uninterrupted one would. `by_length`: windows sorted by length within pools
    of 50 batches, the batches then shuffled — each batch's windows alike in length, so little
    padding is left after the batch is trimmed (Book-Crossing's histories of 1–3 likes beside
    MovieLens' windows of 200)."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if by_length:
        pools = np.split(order, range(size * 50, len(order), size * 50))
        order = np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in pools])
    out = [order[a:a + size] for a in range(0, len(order), size)]
    return [out[i] for i in rng.permutation(len(out))] if by_length else out


@dataclass
class TrainState:
    """What a run resumes from: written atomically after every epoch."""

    epoch: int
    seconds: float
    losses: list
    validation: list = field(default_factory=list)  # Recall@10 before training, after each epoch
    validation_cold: list = field(default_factory=list)  # the same over the cold targets alone
    best_epoch: int = -1  # the epoch kept (0: the untrained tower); -1 without validation
    validation_targets: dict = field(default_factory=dict)  # {targets, cold_targets} ranked

    def record(self) -> dict:
        """The training record every report carries, under its report names."""
        return {"losses": self.losses, "validation_recall@10": self.validation,
                "validation_cold_recall@10": self.validation_cold,
                "validation_targets": self.validation_targets, "best_epoch": self.best_epoch}


def split_validation(sequences: list[list[int]], share: float, seed: int,
                     whole_users: bool = False):
    """(training sequences, validation histories, validation targets): a seeded `share` of the
    sequences with 2+ likes give their last like as a validation target and train on the rest
    (`whole_users`: train on none of it, as the eval's held-out users are never read)."""
    rng = np.random.default_rng([seed, 1])
    chosen = set(np.flatnonzero((rng.random(len(sequences)) < share)
                                & np.array([len(s) >= 2 for s in sequences], bool)).tolist())
    if whole_users:
        train_part = [list(s) for r, s in enumerate(sequences) if r not in chosen]
    else:
        train_part = [list(s[:-1]) if r in chosen else list(s) for r, s in enumerate(sequences)]
    return (train_part, [list(sequences[r][:-1]) for r in sorted(chosen)],
            np.array([sequences[r][-1] for r in sorted(chosen)], np.int64))


class Optimizers:
    """AdamW over the weights; with a sampled softmax the ID vectors apart, under SparseAdam (lazy
    Adam: only the rows a step read move, no weight decay). A step over 271k items, median ms
    (scripts/history_step_bench.py: 64 windows of 2–7 likes, 2,048 negatives, 2 quiet cores,
    2026-12-02): the whole item table + AdamW 747, the step's rows + AdamW 311, the step's rows
    + SparseAdam for the ID vectors 99."""

    def __init__(self, cfg: HistoryConfig, model):
        torch = _torch()
        sparse = cfg.use_ids and model.ids.sparse
        dense = [p for name, p in model.named_parameters() if not (sparse and name == "ids.weight")]
        self.parts = [torch.optim.AdamW(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
        if sparse:
            self.parts.append(torch.optim.SparseAdam([model.ids.weight], lr=cfg.lr))

    def set_lr(self, cfg: HistoryConfig, progress: float) -> None:
        """The schedule's rate at `progress` (0 → 1 over the run's steps): a function of the
        step alone, so a resumed run steps as an uninterrupted one."""
        scale = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) \
            if cfg.lr_schedule == "cosine" else 1.0
        for opt in self.parts:
            for group in opt.param_groups:
                group["lr"] = cfg.lr * scale

    def zero_grad(self) -> None:
        for opt in self.parts:
            opt.zero_grad()

    def step(self) -> None:
        for opt in self.parts:
            opt.step()

    def state_dict(self) -> list[dict]:
        return [opt.state_dict() for opt in self.parts]

    def load_state_dict(self, states: list[dict] | dict) -> None:
        for opt, state in zip(self.parts, states if isinstance(states, list) else [states]):
            opt.load_state_dict(state)


def _save_checkpoint(path: Path, model, opt, state: TrainState, best: dict | None) -> None:
    torch = _torch()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"model": trained_state(model), "opt": opt.state_dict(), "state": asdict(state),
                "rng": torch.get_rng_state(), "best": best}, tmp)
    tmp.replace(path)


class Trainer:
    """One run, setup → epochs → the kept weights: the tower (and its DDP wrapper), the
    optimizers, the training windows and what the validation has chosen so far. Arguments as
    `train`'s."""

    def __init__(self, cfg: HistoryConfig, sequences: list[list[int]], n_items: int,
                 text: np.ndarray | None, checkpoint: Path | None = None, progress: bool = True,
                 start: Path | None = None, counts: np.ndarray | None = None, dist=None,
                 domains: list[tuple[int, int]] | None = None, validator=None):
        torch = _torch()
        self.cfg, self.n_items, self.checkpoint, self.progress = cfg, n_items, checkpoint, progress
        self.dist, self.validator = dist, validator
        self.domains = domains or [(0, n_items)]
        self.rank, self.world = (dist.rank, dist.world) if dist is not None else (0, 1)
        torch.manual_seed(cfg.seed)
        if counts is None:
            counts = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in sequences if s]),
                                 minlength=n_items)
        # log prior of each item as a target, added to the training logits only; None when off:
        # adding zeros to a MovieLens batch's 12,800 × 3,883 logits was 6% of a step's CPU in a
        # profile (a step 1.73–1.90 s against 1.48–1.63 without, alternated, 1 thread, 2026-12-03)
        self.adjust = torch.as_tensor(
            cfg.logit_adjust * np.log((counts + 1) / (counts + 1).sum()), dtype=torch.float32) \
            if cfg.logit_adjust else None
        self.module = build_model(cfg, n_items, text if cfg.use_text else None,
                                  counts >= cfg.id_min_likes)
        if start is not None:
            load_weights(self.module, start)
        self.model = self.module  # DDP's wrapper once training starts under torchrun
        self.opt = Optimizers(cfg, self.module)
        self.state, self.best = TrainState(0, 0.0, []), None
        if checkpoint is not None and checkpoint.is_file():
            saved = torch.load(checkpoint, weights_only=False)
            load_trained(self.module, saved["model"], checkpoint)
            self.opt.load_state_dict(saved["opt"])
            torch.set_rng_state(saved["rng"])
            self.state, self.best = TrainState(**saved["state"]), saved.get("best")
            if self.state.epoch > cfg.epochs:  # its weights are past the run asked for
                raise TowerliteError(
                    f"{checkpoint} holds {self.state.epoch} epochs of a run with these settings; "
                    f"for {cfg.epochs} epochs write to another --out (or move the checkpoint)")
            log.info("resuming %s after epoch %d", checkpoint, self.state.epoch)
        data = windows(sequences, cfg.max_len)
        # a window of one item has no position to train (half of Book-Crossing's: one like each)
        self.data = torch.as_tensor(data[(data >= 0).sum(1) >= 2])
        self.lengths = (self.data >= 0).sum(1).numpy()

    def run(self):
        """Every epoch left, each validated and checkpointed; (the kept model, TrainState)."""
        torch, cfg = _torch(), self.cfg
        if not self.state.validation:
            self.validate(0)
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(self.module)
        for epoch in range(self.state.epoch, cfg.epochs):
            if self.validator is not None and cfg.patience \
                    and epoch - self.state.best_epoch >= cfg.patience:
                log.info("no better validation for %d epochs: stopping after epoch %d",
                         cfg.patience, epoch)
                break
            self.epoch(epoch)
            self.validate(epoch + 1)
            if self.checkpoint is not None and self.rank == 0:
                _save_checkpoint(self.checkpoint, self.module, self.opt, self.state, self.best)
        if self.dist is not None:
            self.dist.barrier()
        if self.best is not None:
            load_trained(self.module, self.best, "the best epoch")
        self.module.eval()
        return self.module, self.state

    def epoch(self, epoch: int) -> None:
        """One pass over the windows, this process' share of each batch."""
        from tqdm.auto import tqdm

        torch, cfg, world = _torch(), self.cfg, self.world
        self.model.train()
        t0, total, steps = time.perf_counter(), 0.0, 0
        # a last batch too small to give every process a window is left out (under DDP each
        # process must run every step)
        chosen = [b for b in batches(self.lengths, cfg.batch_size, cfg.seed, epoch,
                                     cfg.bucket_by_length) if len(b) >= world]
        # bucketed, a batch's loss is its positions' sum over the epoch's mean positions per
        # batch, so every position weighs the same as in mixed batches: a batch mean gave a
        # position in a batch of 2-like windows 199x the weight of one among 200-like windows,
        # and cost MovieLens alone 0.2775 → 0.2288 Recall@10 at 30 epochs (docs/quality.md)
        per_batch = (sum(int(self.lengths[b].sum()) - len(b) for b in chosen)
                     / max(len(chosen), 1) / world) if cfg.bucket_by_length else 0
        bar = tqdm(chosen, disable=not self.progress or self.rank > 0,
                   leave=False, desc=f"{cfg.kind} epoch {epoch + 1}/{cfg.epochs}")
        for step, rows in enumerate(bar):
            self.opt.set_lr(cfg, (epoch + step / len(chosen)) / cfg.epochs)
            batch = trim_padding(self.data[torch.as_tensor(rows)][self.rank::world])
            loss = batch_loss(cfg, self.model, batch, self.n_items, self.adjust, self.domains)
            if per_batch:
                loss = loss * ((int((batch >= 0).sum()) - len(batch)) / per_batch)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total, steps = total + loss.item(), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}")
        self.state = replace(self.state, epoch=epoch + 1,
                             seconds=self.state.seconds + time.perf_counter() - t0,
                             losses=self.state.losses + [round(total / max(steps, 1), 4)])
        log.info("%s epoch %d/%d: loss %.4f (%.0f s)", cfg.kind, epoch + 1, cfg.epochs,
                 self.state.losses[-1], time.perf_counter() - t0)

    def validate(self, epoch: int) -> None:
        """The validator's scores after `epoch` (0: untrained), and the epoch kept so far: the
        best Recall@10 (`cfg.cold_floor`: of the epochs whose cold recall is at least the
        untrained tower's). Every process the same: the weights are in step under DDP."""
        if self.validator is None:
            return
        torch, state = _torch(), self.state
        rng_state = torch.get_rng_state()  # so a run validates without changing its training
        scores = self.validator(self.module)
        torch.set_rng_state(rng_state)
        recall, cold = round(scores["recall@10"], 5), round(scores["cold_recall@10"], 5)
        floor = state.validation_cold[0] if state.validation_cold else cold  # the untrained tower
        allowed = not self.cfg.cold_floor or cold >= floor
        better = not state.validation or (allowed and recall > state.validation[state.best_epoch])
        self.state = replace(state, validation=state.validation + [recall],
                             validation_cold=state.validation_cold + [cold],
                             best_epoch=epoch if better else state.best_epoch,
                             validation_targets={k: scores[k] for k in ("targets", "cold_targets")
                                                 if k in scores})
        if better:
            self.best = {k: v.clone() for k, v in trained_state(self.module).items()}
        log.info("validation after epoch %d: %.4f, cold targets %.4f (best: epoch %d)", epoch,
                 recall, cold, self.state.best_epoch)


def train(cfg: HistoryConfig, sequences: list[list[int]], n_items: int, text: np.ndarray | None,
          checkpoint: Path | None = None, progress: bool = True, start: Path | None = None,
          counts: np.ndarray | None = None, dist=None,
          domains: list[tuple[int, int]] | None = None, validator=None):
    """Train on `sequences` (catalog rows, oldest → newest; training users only). Resumes from
    `checkpoint` when it exists (written after every epoch). `start`: a saved tower's weights
    (WEIGHTS_FILE) to fine-tune from instead of a fresh start (`towerlite fold-in`); `counts`:
    each item's training likes, which decide the items with an ID vector (default: counted in
    `sequences`). `dist` (rank, world, barrier(): towerlite.distill.train.Dist under torchrun):
    each process takes every world-th window of each global batch, DDP averages the gradients,
    the first process writes the checkpoints. `domains`: the catalog's domains as row ranges
    [start, stop) (one tower over several datasets): each target is ranked against its own
    domain's items only. `validator(model) → {"recall@10", "cold_recall@10"}`
    (towerlite.evaluation.sequential.validation): run before training and after every epoch,
    the best epoch's weights are returned (`cfg.cold_floor`: of the epochs whose cold recall is
    at least the untrained tower's; `cfg.patience`: stop after that many epochs without a
    better one). Returns (model, TrainState)."""
    return Trainer(cfg, sequences, n_items, text, checkpoint, progress, start, counts, dist,
                   domains, validator).run()


def trim_padding(batch):
    """Windows are left-padded: the columns that are padding in every window are cut off (real
    positions read only real items, so their states do not change)."""
    return batch[:, int((batch >= 0).any(0).float().argmax()):]


def batch_loss(cfg: HistoryConfig, model, batch, n_items: int, adjust,
               domains: list[tuple[int, int]]):
    """One batch's training loss: full softmax, or sampled with a fresh uniform sample of
    negatives where `cfg` asks for one; its forward in bfloat16 with `cfg.precision` bf16."""
    torch = _torch()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
        if sampled(cfg, n_items):
            sample = torch.randint(0, n_items, (cfg.negatives,))
            return sampled_loss(cfg, model, batch, sample, adjust)
        return full_loss(cfg, model, batch, adjust, domains)


def sampled_loss(cfg: HistoryConfig, model, batch, sample, adjust=None):
    """Cross-entropy of each position's next item (`batch`: windows of catalog rows, -1 padding)
    against the batch's other targets and the shared uniform `sample` of negatives (a sampled
    copy of the target masked out; `adjust`: each item's log prior, added when logit adjustment
    is on). A target repeated in the batch stays a candidate once per position, so its copies
    share its probability: the same as one candidate whose logit has + log(copies), a logit
    adjustment by in-batch counts that popular targets get (every Book-Crossing whole-catalog
    run of docs/quality.md trained so; candidates made unique were not measured). Only the
    rows the step reads are computed (`model(inputs, needed)`): the whole 271k-row table cost
    most of a step (scripts/history_step_bench.py)."""
    torch = _torch()
    inputs, targets = batch[:, :-1], batch[:, 1:]
    keep = (inputs >= 0) & (targets >= 0)
    needed = torch.unique(torch.cat([batch[batch >= 0], sample]))  # sorted
    states, table = model(inputs, needed)
    h, t = states[keep], targets[keep]
    cand = torch.cat([t, sample])
    logits = _logits(cfg, h, table[torch.searchsorted(needed, cand)])
    if adjust is not None:
        logits = logits + adjust[cand]
    logits[:, len(t):][sample.unsqueeze(0) == t.unsqueeze(1)] = -1e9  # not the target
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(t)))


def full_loss(cfg: HistoryConfig, model, batch, adjust, domains: list[tuple[int, int]]):
    """Full-softmax cross-entropy of each position's next item, over its target's domain's rows
    alone (`domains`: row ranges; one range: the whole catalog). Within a domain because the
    served DOMAIN filter ranks within one, and a movie position scored against 20,000 books as
    well cost 6x the logits. `adjust`: each item's log prior, or None."""
    torch = _torch()
    inputs, targets = batch[:, :-1], batch[:, 1:]
    keep = (inputs >= 0) & (targets >= 0)
    states, table = model(inputs)
    h, t = states[keep], targets[keep]
    total = 0
    for a, b in domains:
        inside = (t >= a) & (t < b)
        if inside.any():
            logits = _logits(cfg, h[inside], table[a:b])
            total = total + torch.nn.functional.cross_entropy(
                logits if adjust is None else logits + adjust[a:b], t[inside] - a,
                reduction="sum")
    return total / len(t)


def _logits(cfg: HistoryConfig, states, rows):
    """states @ rows.T. With a fixed skip gain the skip columns' part has no weight to train:
    computed without its backward, which was most of a text-skip epoch (a 448-wide softmax over
    20,000 books: 174–434 s an epoch against 20 s without the skip)."""
    if not (cfg.text_skip and cfg.skip_gain):
        return states @ rows.T
    torch = _torch()
    with torch.no_grad():
        fixed = states[:, cfg.dim:] @ rows[:, cfg.dim:].T
    return states[:, :cfg.dim] @ rows[:, :cfg.dim].T + fixed
