"""`towerlite distill`: teacher → students on the real multi-domain mix, evaluated, saved.

    OUT/candidates/<name>/   every candidate's model folder (HF + sentence-transformers layout)
    OUT/model/               the candidate named by `serve` (what export and deploy take)
    OUT/checkpoints/         the resume points of the candidates in training
    OUT/distill_report.json  config, data mix, losses, timings, evaluation, versions
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

from towerlite.embedding_cache import cache_key, cache_root, cached_embeddings
from towerlite.evaluation.retrieval import agreement, recommended, retrieval
from towerlite.files import ensure_writable_dir, write_json_atomic
from towerlite.machine import cpu_info

from .config import DistillConfig, check
from .students import (
    build_student,
    check_spec,
    fit_projection,
    output_dim,
    save_student,
    start_config,
)
from .texts import Catalogs, check_mix, eval_set, training_set
from .train import Dist, init_distributed, train

PROJECTION_FIT_TEXTS = 4000


def preflight(cfg: DistillConfig, log=print) -> tuple[str, int]:
    """Everything checkable before loading data or weights: (teacher folder, teacher dim)."""
    from .config import StudentSpec

    check(cfg)
    check_mix(cfg.mix)
    ensure_writable_dir(Path(cfg.out))
    teacher_folder, teacher_config = start_config(StudentSpec(start=cfg.teacher), log)
    teacher_dim = output_dim(Path(teacher_folder), teacher_config.hidden_size)
    for name, spec in cfg.students.items():
        check_spec(name, spec, teacher_dim, log)
    return teacher_folder, teacher_dim


def hash_key(*parts) -> str:
    """A short hash of everything a training run's result depends on (its checkpoints carry it)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LazyTeacher:
    """Loads the teacher only when a cache miss needs it."""

    def __init__(self, spec: str, max_length: int, log):
        self.spec, self.max_length, self.log, self.encoder = spec, max_length, log, None

    def __call__(self, texts: list[str]) -> np.ndarray:
        from towerlite.models import SentenceEncoder

        if self.encoder is None:
            self.encoder = SentenceEncoder(self.spec, log=self.log, attn_implementation="eager")
        return self.encoder.encode(texts, max_length=self.max_length)


def _start_student(spec, teacher_dim: int, texts: list[str], targets: np.ndarray, max_length: int, say):
    """The student before training: kept layers, and its head fitted by least squares."""
    module, tok = build_student(spec, teacher_dim, say)
    fit = None
    if spec.project:
        n = min(PROJECTION_FIT_TEXTS, len(texts))
        fit = fit_projection(module, tok, texts[:n], targets[:n], max_length)
        say(f"projection head fitted by least squares: mean cosine {fit:.4f} on {n} training texts"
            if fit is not None else f"projection head left at random: {n} texts are too few for a fit")
    return module, tok, fit


def teacher_eval_embeddings(ev, teacher_folder: str, max_length: int, common: dict) -> tuple[dict, int]:
    """The teacher's embeddings of the held-out texts, users and catalog (cached): ({part: array},
    how many were encoded now)."""
    t_eval, n_eval = {}, 0
    for part, texts in (("texts", [r.text for r in ev.texts]), ("users", ev.user_texts), ("items", ev.catalog_texts)):
        t_eval[part], n = cached_embeddings(texts, cache_root(), cache_key(teacher_folder, max_length, texts),
                                             label=f"teacher embeddings (evaluation {part})", **common)
        n_eval += n
    return t_eval, n_eval


def teacher_row(teacher, t_eval: dict, ev, teacher_dim: int, speed_texts: list[str]) -> dict:
    """The teacher's own evaluation row (and its top-10 lists into t_eval["top"])."""
    t_eval["top"] = recommended(t_eval["users"], t_eval["items"], ev.catalog_ids, ev.cases)
    row = {"dim": teacher_dim,
           "agreement": agreement(t_eval["texts"], t_eval["texts"], [r.source for r in ev.texts]),
           "retrieval": retrieval(t_eval["users"], t_eval["items"], ev.catalog_ids, ev.cases)}
    start = time.perf_counter()
    teacher(speed_texts)
    row["pytorch_sentences_per_s"] = round(len(speed_texts) / (time.perf_counter() - start), 1)
    return row


def speed_sample(ev, n: int, seed: int) -> list[str]:
    texts = [r.text for r in ev.texts]
    return [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:n]]


def _encoder(module, tokenizer, max_length: int):
    from towerlite.models import encode_with

    return lambda texts: encode_with(module, tokenizer, texts, 32, max_length)


def evaluate_row(encode, ev, t_eval: dict, speed_texts: list[str]) -> dict:
    """Agreement with the teacher per source, retrieval (and asymmetric retrieval: items by the
    teacher, users by this model, when it lives in the teacher's space), PyTorch speed."""
    texts = encode([r.text for r in ev.texts])
    users, items = encode(ev.user_texts), encode(ev.catalog_texts)
    row = {"dim": int(texts.shape[1]),
           "agreement": agreement(t_eval["texts"], texts, [r.source for r in ev.texts]),
           "retrieval": retrieval(users, items, ev.catalog_ids, ev.cases, teacher_top=t_eval["top"])}
    if texts.shape[1] == t_eval["items"].shape[1]:
        row["retrieval_teacher_items"] = retrieval(users, t_eval["items"], ev.catalog_ids, ev.cases,
                                                   teacher_top=t_eval["top"])
    start = time.perf_counter()
    encode(speed_texts)
    row["pytorch_sentences_per_s"] = round(len(speed_texts) / (time.perf_counter() - start), 1)
    return row


def _copy_atomic(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst.exists():
        shutil.rmtree(dst)
    tmp.rename(dst)


def _serve_choice(cfg: DistillConfig, rows: dict) -> str:
    if cfg.serve in {c.name for c in cfg.candidates}:
        return cfg.serve
    student = cfg.serve.removeprefix("best-")
    names = [c.name for c in cfg.candidates if c.student == student]
    return max(names, key=lambda n: rows[n]["retrieval"]["ndcg@10"])


def run(cfg: DistillConfig, log=print) -> dict:
    import torch

    d: Dist = init_distributed()
    say = log if d.rank == 0 else (lambda *a, **k: None)
    teacher_folder, teacher_dim = preflight(cfg, say)
    torch.manual_seed(cfg.seed)
    out, started, timings = Path(cfg.out), time.monotonic(), {}
    say("loading the corpora and interactions (training part; held-out texts and users kept apart)")
    cat = Catalogs()
    tr = training_set(cfg.mix, cfg.history_items, cfg.seed, cat, tuple(cfg.user_datasets))
    ev = eval_set(cfg.eval_texts_per_source, cfg.eval_users, cfg.history_items, cfg.seed,
                  cfg.eval_catalog_items, cat)
    del cat
    timings["data_s"] = round(time.monotonic() - started, 1)
    say(f"training texts: {len(tr.texts):,} ({len(tr.pairs):,} user–item pairs); held-out: "
        f"{len(ev.texts)} texts, {len(ev.cases)} MovieLens users over {len(ev.catalog_ids):,} movies")

    t0, teacher = time.monotonic(), LazyTeacher(cfg.teacher, cfg.max_length, say)
    cache_dir = cache_root()
    common = dict(encode=teacher, chunk=cfg.teacher_chunk, rank=d.rank, world=d.world, barrier=d.barrier,
                  progress=d.rank == 0)
    train_key = cache_key(teacher_folder, cfg.max_length, tr.texts)
    t_train, n_train = cached_embeddings(tr.texts, cache_dir, train_key, label="teacher embeddings (training texts)", **common)
    t_eval, n_eval = teacher_eval_embeddings(ev, teacher_folder, cfg.max_length, common)
    timings["teacher_s"] = round(time.monotonic() - t0, 1)
    timings["teacher_texts_encoded"] = n_train + n_eval
    say(f"teacher embeddings: {len(t_train) + sum(map(len, t_eval.values())):,} ({n_train + n_eval:,} encoded now, the rest "
        f"from {cache_dir}) in {timings['teacher_s']} s")

    trained, ckpt_dir = {}, out / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for cand in cfg.candidates:
        spec = cfg.students[cand.student]
        run_key = hash_key(cand, spec, train_key, {k: v for k, v in cfg.to_json().items()
                                                if k not in ("out", "candidates", "students", "serve")})
        folder = out / "candidates" / cand.name
        prov_file = folder / "towerlite_student.json"
        if prov_file.is_file() and json.loads(prov_file.read_text()).get("run_key") == run_key:
            say(f"[{cand.name}] already trained ({folder}); skipping")
            trained[cand.name] = json.loads(prov_file.read_text())["training"]
            continue
        say(f"[{cand.name}] student {cand.student} ({spec.start}, layers {list(spec.layers or []) or 'all'}), "
            f"loss {cand.loss}")
        module, tok, fit = _start_student(spec, teacher_dim, tr.texts, t_train, cfg.max_length, say)
        result = train(module, tok, tr.texts, t_train, tr.pairs, cand.loss, cfg,
                       ckpt_dir / f"{cand.name}.pt", run_key, d, say)
        result["projection_fit_cosine"] = fit
        trained[cand.name] = result
        if d.rank == 0:
            save_student(module, tok, folder, cfg.max_length, {
                "run_key": run_key, "candidate": cand.name, "student": cand.student, "start": spec.start,
                "layers": list(spec.layers) if spec.layers else None, "projection": spec.project,
                "teacher": cfg.teacher, "teacher_dim": teacher_dim, "loss": cand.loss, "training": result})
        d.barrier()
    timings["train_s"] = round(time.monotonic() - t0 - timings["teacher_s"], 1)
    d.close()  # evaluation runs on the first process alone
    if d.rank != 0:
        return {}
    return _evaluate_and_report(cfg, teacher, ev, t_eval, tr, t_train, trained, teacher_folder, teacher_dim, timings, started, say)


def _evaluate_and_report(cfg, teacher, ev, t_eval, tr, t_train, trained, teacher_folder, teacher_dim, timings, started, say) -> dict:
    from towerlite.models import SentenceEncoder

    t0, out = time.monotonic(), Path(cfg.out)
    speed_texts = speed_sample(ev, cfg.speed_texts, cfg.seed)
    say("evaluating on held-out texts and users")
    rows = {"teacher": teacher_row(teacher, t_eval, ev, teacher_dim, speed_texts)}
    ref = SentenceEncoder("student-start", log=say, attn_implementation="eager")
    rows["student-start (as published)"] = evaluate_row(lambda t: ref.encode(t, max_length=cfg.max_length),
                                                        ev, t_eval, speed_texts)
    for name, spec in cfg.students.items():
        module, tok, _ = _start_student(spec, teacher_dim, tr.texts, t_train, cfg.max_length, say)
        rows[f"{name} before training"] = evaluate_row(_encoder(module, tok, cfg.max_length), ev, t_eval,
                                                       speed_texts)
    for cand in cfg.candidates:
        enc = SentenceEncoder(str(out / "candidates" / cand.name), log=say, attn_implementation="eager")
        rows[cand.name] = evaluate_row(lambda t, e=enc: e.encode(t, max_length=cfg.max_length), ev, t_eval,
                                       speed_texts)
        rows[cand.name].update(student=cand.student, loss=cand.loss,
                               layers=enc.module.transformer.config.num_hidden_layers)
    rows = {k: v for k, v in rows.items() if v is not None}
    serve = _serve_choice(cfg, rows)
    _copy_atomic(out / "candidates" / serve, out / "model")
    timings["eval_s"] = round(time.monotonic() - t0, 1)
    timings["total_s"] = round(time.monotonic() - started, 1)
    report = {
        "teacher": cfg.teacher, "teacher_folder": teacher_folder, "teacher_dim": teacher_dim,
        "config": cfg.to_json(), "data": {"training_texts": len(tr.texts), "pairs": len(tr.pairs),
                                          "per_source": dict(sorted(_count(tr.sources).items())),
                                          "eval_texts_per_source": dict(sorted(_count([r.source for r in ev.texts]).items())),
                                          "eval_users": len(ev.cases), "catalog_items": len(ev.catalog_ids)},
        "training": trained, "evaluation": rows, "served": serve, "model_folder": str(out / "model"),
        "world_size": int(os.environ.get("WORLD_SIZE", "1")), "timings": timings, "peak_rss_mb": peak_rss_mb(),
        "machine": cpu_info(),
        "versions": {p: version(p) for p in ("torch", "transformers", "tokenizers", "numpy")},
    }
    write_json_atomic(out / "distill_report.json", report)
    return report


def _count(values) -> dict:
    from collections import Counter

    return dict(Counter(values))


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
