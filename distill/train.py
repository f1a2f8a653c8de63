"""The training loop (distill and finetune share it): checkpoints, resume, DDP when launched by
torchrun. Every step's batch is a pure function of (seed, step), and dropout is off, so a run
resumed from its last checkpoint ends with the same weights as one never interrupted."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .losses import embed_loss, score_loss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def init_distributed() -> Dist:
    """torchrun sets WORLD_SIZE/RANK: gloo on CPU, nccl on GPU. Plain `python` runs alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import datetime

    import torch
    import torch.distributed as dist

    if not dist.is_initialized():  # the teacher pass may hold the others at a barrier for long
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                timeout=datetime.timedelta(hours=4))
    return Dist(dist.get_rank(), dist.get_world_size())


@contextmanager
def first_rank_logs(dist: Dist) -> Iterator[None]:
    """Under torchrun only the first process logs progress (the others would repeat each line):
    towerlite's loggers stay quiet below WARNING on the other ranks while the block runs."""
    package = logging.getLogger(__name__.split(".")[0])
    level = package.level
    if dist.rank != 0:
        package.setLevel(logging.WARNING)
    try:
        yield
    finally:
        package.setLevel(level)


def epoch_batches(lengths: np.ndarray, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The epoch's global batches: shuffled, then texts of similar token length grouped (sorted
    within windows of 64 batches) so a batch pads little, then the batches shuffled."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    window = 64 * batch
    batches = []
    for w in range(0, len(order), window):
        part = order[w:w + window]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch] for i in range(0, len(part), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def batch_indices(lengths: np.ndarray, batch: int, step: int, seed: int, dist: Dist) -> np.ndarray:
    """This process's share of global batch `step`."""
    per_epoch = math.ceil(len(lengths) / batch)
    epoch, index_in_epoch = divmod(step, per_epoch)
    return epoch_batches(lengths, batch, seed, epoch)[index_in_epoch][dist.rank::dist.world]


def pair_indices(n_pairs: int, batch: int, step: int, seed: int, dist: Dist) -> np.ndarray:
    rng = np.random.default_rng([seed, 1 << 20, step])
    picked = rng.choice(n_pairs, min(batch, n_pairs), replace=False)
    return picked[dist.rank::dist.world]


def pair_every(n_texts: int, n_pairs: int, cfg) -> int:
    """One user–item step after every `every - 1` corpus steps, so each epoch sees the pairs
    about once. Pair steps are separate because user texts are long: mixed into every corpus
    batch they padded it to the maximum length (7× the step time, measured)."""
    corpus_batches = math.ceil(n_texts / cfg.batch_size)
    pair_batches = max(1, n_pairs // cfg.pair_batch_size)
    return max(2, round(corpus_batches / pair_batches) + 1)


def step_kind(step: int, every: int) -> tuple[str, int]:
    """("corpus", index of the corpus batch) or ("pairs", index of the pair batch)."""
    if not every:
        return "corpus", step
    cycle, pos = divmod(step, every)
    return ("pairs", cycle) if pos == every - 1 else ("corpus", cycle * (every - 1) + pos)


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def run_steps(module, total: int, step_fn, cfg, ckpt: Path, run_key: str, dist: Dist,
              state: dict | None = None) -> dict:
    """The one training loop (distill and finetune): AdamW over the trainable parameters,
    linear warm-up then decay, gradient clipping, a checkpoint every `cfg.checkpoint_every`
    steps (atomic) and resume from it. `step_fn(model, step) -> (loss, log entry)` makes each
    step's loss; `state` (e.g. a negatives bank) is saved in the checkpoint and restored."""
    import torch
    from tqdm.auto import tqdm

    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    warmup = max(1, int(cfg.warmup_fraction * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    history, start, seconds = [], 0, 0.0
    state = {} if state is None else state
    if ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        if saved["run_key"] == run_key:
            module.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["scheduler"])
            history, start, seconds = saved["history"], saved["step"], saved["seconds"]
            state.update(saved.get("state", {}))
            log.info(f"resuming from {ckpt} at step {start}/{total}")
        else:
            log.info(f"{ckpt} is from another configuration; starting this run afresh")
    model = module
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(module)
    bar = tqdm(total=total, initial=start, unit="step", desc="training", disable=dist.rank != 0)
    for step in range(start, total):
        step_started = time.perf_counter()
        loss, entry = step_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        seconds += time.perf_counter() - step_started
        history.append({"step": step + 1, **entry})
        bar.update(1)
        bar.set_postfix(entry)
        if dist.rank == 0 and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == total):
            _save_checkpoint(ckpt, {"run_key": run_key, "step": step + 1,
                                    "model": module.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "history": history,
                                    "seconds": seconds, "state": state})
    bar.close()
    dist.barrier()
    return {"steps": total, "history": history, "train_seconds": round(seconds, 1),
            "resumed_at_step": start}


def train(module, tokenizer, texts: list[str], targets: np.ndarray, pairs: list[tuple[int, int]],
          loss_name: str, cfg, ckpt: Path, run_key: str, dist: Dist) -> dict:
    """Distill into `module` in place; returns the loss history and timings. Resumes from `ckpt`."""
    import torch

    use_score = loss_name == "embed+score" and len(pairs) >= 2
    corpus_steps = cfg.epochs * math.ceil(len(texts) / cfg.batch_size)
    every = pair_every(len(texts), len(pairs), cfg) if use_score else 0
    total = corpus_steps + (corpus_steps // (every - 1) if every else 0)
    targets_t = torch.from_numpy(targets)
    token_ids = tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
    lengths = np.array([len(ids) for ids in token_ids])

    def step_fn(model, step):
        kind, batch_number = step_kind(step, every)
        if kind == "pairs":  # user texts and their next items: embed + in-batch score loss
            picked = pair_indices(len(pairs), cfg.pair_batch_size, batch_number, cfg.seed, dist)
            chosen = [pairs[i] for i in picked]
            rows = [user for user, _ in chosen] + [item for _, item in chosen]
        else:
            rows = list(batch_indices(lengths, cfg.batch_size, batch_number, cfg.seed, dist))
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                          max_length=cfg.max_length, return_tensors="pt")
        emb = model(batch["input_ids"], batch["attention_mask"])
        target = targets_t[rows]
        loss = loss_embed = embed_loss(emb, target)
        entry = {"embed": round(loss_embed.item(), 6)}
        if kind == "pairs":
            n_users = len(chosen)
            loss_score = score_loss(emb[:n_users], emb[n_users:], target[:n_users],
                                    target[n_users:], cfg.score_temperature)
            loss = loss + cfg.score_weight * loss_score
            entry["score"] = round(loss_score.item(), 6)
        return loss, entry

    result = run_steps(module, total, step_fn, cfg, ckpt, run_key, dist)
    return {**result, "texts_per_step": cfg.batch_size, "pair_step_every": every}
