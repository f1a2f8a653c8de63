"""`towerlite finetune`: teach the towers what users like, from the training interactions.

One encoder is both towers (user history text → embedding, item text → embedding); each step
scores a batch of users against their next liked items with symmetric InfoNCE — the other
users' items as negatives (logQ-corrected) plus a bank of catalog items re-encoded every few
steps — through the same training loop as distillation (checkpoints, resume, DDP).

    OUT/model/                the fine-tuned encoder (the folder format export and deploy take)
    OUT/checkpoints/          resume points
    OUT/finetune_report.json  config, data, loss history, evaluation (start vs fine-tuned), timings
"""

from __future__ import annotations

import logging
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError
from towerlite.files import ensure_writable_dir, write_json_atomic
from towerlite.machine import cpu_info

from ..config import StudentSpec
from ..losses import info_nce
from ..pipeline import (
    LazyTeacher,
    evaluate_row,
    hash_key,
    peak_rss_mb,
    speed_sample,
    teacher_eval_embeddings,
    teacher_row,
)
from ..students import build_student, save_student, start_config
from ..train import Dist, first_rank_logs, init_distributed, run_steps
from .config import FinetuneConfig, check
from .interactions import load_interactions, step_batch, valid_negatives

log = logging.getLogger(__name__)


def _run_key(cfg: FinetuneConfig, start_folder: str) -> str:
    """What the trained weights depend on: not the output folder nor the evaluation settings."""
    data = {k: v for k, v in cfg.to_json().items()
            if k not in ("out", "evaluate") and not k.startswith(("eval_", "speed"))}
    return hash_key(data, start_folder)


def _encode(model, tok, texts: list[str], max_length: int):
    batch = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return model(batch["input_ids"], batch["attention_mask"])


def _bank(module, tok, data, cfg: FinetuneConfig, step: int) -> dict:
    """A uniform draw of the dataset's catalog (all of it when small), encoded without gradient."""
    import torch

    n_items = len(data.item_ids)
    rng = np.random.default_rng([cfg.seed, 1 << 20, step])
    rows = (np.arange(n_items) if n_items <= cfg.bank_size else
            np.sort(rng.choice(n_items, cfg.bank_size, replace=False)))
    texts = [data.item_texts[r] for r in rows]
    with torch.no_grad():
        emb = torch.cat([_encode(module, tok, texts[i:i + 256], cfg.max_length)
                         for i in range(0, len(texts), 256)])
    return {"step": step, "rows": rows, "emb": emb}


def make_step(module, tok, datasets: list, cfg: FinetuneConfig, state: dict, dist: Dist):
    """step_fn for the training loop: this step's batch, its negatives, the InfoNCE loss."""
    weights = [cfg.datasets[x.name] for x in datasets]
    by_name = {x.name: x for x in datasets}

    def step_fn(model, step):
        batch = step_batch(datasets, weights, cfg.batch_size, cfg.history_items, cfg.seed, step)
        mine = slice(dist.rank, None, dist.world)  # under DDP each process takes its users' share
        texts, positives = batch.user_texts[mine], batch.positives[mine]
        batch.users, batch.seen, batch.positives = batch.users[mine], batch.seen[mine], positives
        data = by_name[batch.dataset]
        item_texts = [data.item_texts[r] for r in positives]
        if dist.world > 1:  # DDP: one forward per backward (items then pad to the users' length)
            users, items = _encode(model, tok, texts + item_texts,
                                   cfg.max_length).split(len(texts))
        else:  # two forwards: the short item texts padded only to their own length
            users = _encode(model, tok, texts, cfg.max_length)
            items = _encode(model, tok, item_texts, cfg.max_length)
        bank = bank_valid = None
        if cfg.bank_size:
            banks = state.setdefault("banks", {})
            if (batch.dataset not in banks
                    or step - banks[batch.dataset]["step"] >= cfg.bank_refresh):
                banks[batch.dataset] = _bank(module, tok, data, cfg, step)
            bank = banks[batch.dataset]["emb"]
            bank_valid = valid_negatives(batch, banks[batch.dataset]["rows"])
        log_q = data.log_q[positives] if cfg.logq_correction else None
        loss = info_nce(users, items, cfg.temperature, valid_negatives(batch, positives), log_q,
                        bank, bank_valid, cfg.symmetric)
        return loss, {"loss": round(loss.item(), 5), "dataset": batch.dataset}

    return step_fn


def preflight(cfg: FinetuneConfig) -> str:
    """Everything checkable before loading data: the start model's folder."""
    check(cfg)
    ensure_writable_dir(Path(cfg.out))
    folder, config = start_config(StudentSpec(start=cfg.start))
    n_layers = config.num_hidden_layers
    if cfg.layers is not None and (
            not cfg.layers or any(i < 0 or i >= n_layers for i in cfg.layers)):
        raise TowerliteError(f"layers {list(cfg.layers)} out of range for the {n_layers}-layer "
                             f"start {cfg.start!r}")
    return folder


def build(cfg: FinetuneConfig):
    """(module, tokenizer) at the start: the start model, its kept layers, token embeddings
    frozen."""
    spec = StudentSpec(start=cfg.start, layers=cfg.layers, project=False)
    module, tok = build_student(spec, 0)
    if cfg.freeze_embeddings:
        module.transformer.embeddings.requires_grad_(False)
    return module, tok


def run(cfg: FinetuneConfig) -> dict:
    """The whole run; the report on the first process, {} on the others (under torchrun only
    the first logs, evaluates and reports)."""
    dist = init_distributed()
    with first_rank_logs(dist):
        return _run(cfg, dist)


def _run(cfg: FinetuneConfig, dist: Dist) -> dict:
    import torch

    start_folder = preflight(cfg)
    torch.manual_seed(cfg.seed)
    out, started, timings = Path(cfg.out), time.monotonic(), {}
    datasets = [load_interactions(name, cfg.seed) for name in cfg.datasets]
    timings["data_s"] = round(time.monotonic() - started, 1)
    module, tok = build(cfg)
    run_key = _run_key(cfg, start_folder)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    n_trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
    log.info(f"fine-tuning {cfg.start} ({n_trained:,} trained parameters) for {cfg.steps} steps "
             f"of {cfg.batch_size} users")

    # the negatives banks: saved in each checkpoint, restored on resume
    train_started, state = time.monotonic(), {}
    result = run_steps(module, cfg.steps, make_step(module, tok, datasets, cfg, state, dist), cfg,
                       out / "checkpoints" / "finetune.pt", run_key, dist, state=state)
    timings["train_s"] = round(time.monotonic() - train_started, 1)
    data = {x.name: {"training_users": len(x.likes), "likes": int(sum(map(len, x.likes))),
                     "items": len(x.item_ids),
                     "steps": sum(1 for h in result["history"] if h["dataset"] == x.name)}
            for x in datasets}
    if dist.rank == 0:
        save_student(module, tok, out / "model", cfg.max_length, {
            "run_key": run_key, "finetuned_from": cfg.start, "start_folder": start_folder,
            "layers": list(cfg.layers) if cfg.layers else None, "recipe": "interaction InfoNCE",
            "datasets": cfg.datasets,
            "training": {k: v for k, v in result.items() if k != "history"}})
    dist.close()
    if dist.rank != 0:
        return {}
    report = {"config": cfg.to_json(), "start_folder": start_folder, "data": data,
              "training": result, "model_folder": str(out / "model"), "world_size": dist.world}
    if cfg.evaluate:
        eval_started = time.monotonic()
        report["evaluation"] = evaluate(cfg, out / "model")
        timings["eval_s"] = round(time.monotonic() - eval_started, 1)
    timings["total_s"] = round(time.monotonic() - started, 1)
    versions = {p: version(p) for p in ("torch", "transformers", "tokenizers", "numpy")}
    report.update(timings=timings, peak_rss_mb=peak_rss_mb(), machine=cpu_info(),
                  versions=versions)
    write_json_atomic(out / "finetune_report.json", report)
    return report


def evaluate(cfg: FinetuneConfig, model_folder: Path) -> dict:
    """The start and the fine-tuned model on distill's held-out measures: agreement with the
    teacher per text source (what fine-tuning made it forget) and MovieLens retrieval."""
    from towerlite.embedding_cache import cache_key, cache_root, cached_embeddings
    from towerlite.models import SentenceEncoder, encode_with

    from ..texts import eval_set

    held_out = eval_set(cfg.eval_texts_per_source, cfg.eval_users, cfg.history_items, cfg.seed,
                        cfg.eval_catalog_items)
    teacher_folder, _ = start_config(StudentSpec(start=cfg.teacher))
    teacher = LazyTeacher(cfg.teacher, cfg.max_length)
    teacher_emb, _ = teacher_eval_embeddings(held_out, teacher_folder, cfg.max_length,
                                             dict(encode=teacher, chunk=512))
    speed = speed_sample(held_out, cfg.speed_texts, cfg.seed)
    teacher_dim = teacher_emb["texts"].shape[1]
    rows = {"teacher": teacher_row(teacher, teacher_emb, held_out, teacher_dim, speed)}
    # else the teacher row is the start
    if StudentSpec(start=cfg.start) != StudentSpec(start=cfg.teacher) or cfg.layers:
        start, tok = build(cfg)
        rows[f"{cfg.start} (start)"] = evaluate_row(
            lambda texts: encode_with(start, tok, texts, 32, cfg.max_length), held_out,
            teacher_emb, speed)
    tuned = SentenceEncoder(str(model_folder), attn_implementation="eager")

    def encode(texts):  # cached: distilling from this model (recipe 2) reuses these embeddings
        key = cache_key(str(model_folder), cfg.max_length, texts)
        return cached_embeddings(texts, cache_root(), key,
                                 lambda part: tuned.encode(part, max_length=cfg.max_length),
                                 progress=False)[0]

    rows["fine-tuned"] = evaluate_row(encode, held_out, teacher_emb, speed)
    return rows

