"""`towerlite distill`: teacher → students on the real multi-domain mix, evaluated, saved.

    OUT/candidates/<name>/   every candidate's model folder (HF + sentence-transformers layout)
    OUT/model/               the candidate named by `serve` (what export and deploy take)
    OUT/checkpoints/         the resume points of the candidates in training
    OUT/distill_report.json  config, data mix, losses, timings, evaluation, versions

One run (`DistillRun`): setup → teacher embeddings → train the candidates (every process
under torchrun) → evaluate → report (the first process alone).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
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
from .texts import Catalogs, EvalSet, TrainSet, check_mix, eval_set, training_set
from .train import Dist, first_rank_logs, init_distributed, train

log = logging.getLogger(__name__)

PROJECTION_FIT_TEXTS = 4000


def preflight(cfg: DistillConfig) -> tuple[str, int]:
    """Everything checkable before loading data or weights: (teacher folder, teacher dim)."""
    from .config import StudentSpec

    check(cfg)
    check_mix(cfg.mix)
    ensure_writable_dir(Path(cfg.out))
    teacher_folder, teacher_config = start_config(StudentSpec(start=cfg.teacher))
    teacher_dim = output_dim(Path(teacher_folder), teacher_config.hidden_size)
    for name, spec in cfg.students.items():
        check_spec(name, spec, teacher_dim)
    return teacher_folder, teacher_dim


def hash_key(*parts) -> str:
    """A short hash of everything a training run's result depends on (its checkpoints carry it)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class LazyTeacher:
    """Loads the teacher only when a cache miss needs it."""

    def __init__(self, spec: str, max_length: int):
        self.spec, self.max_length, self.encoder = spec, max_length, None

    def __call__(self, texts: list[str]) -> np.ndarray:
        from towerlite.models import SentenceEncoder

        if self.encoder is None:
            self.encoder = SentenceEncoder(self.spec, attn_implementation="eager")
        return self.encoder.encode(texts, max_length=self.max_length)


def _start_student(spec, teacher_dim: int, texts: list[str], targets: np.ndarray,
                   max_length: int):
    """The student before training: kept layers, and its head fitted by least squares."""
    module, tok = build_student(spec, teacher_dim)
    fit = None
    if spec.project:
        n_fit = min(PROJECTION_FIT_TEXTS, len(texts))
        fit = fit_projection(module, tok, texts[:n_fit], targets[:n_fit], max_length)
        log.info(f"projection head fitted by least squares: mean cosine {fit:.4f} on {n_fit} "
                 "training texts" if fit is not None else
                 f"projection head left at random: {n_fit} texts are too few for a fit")
    return module, tok, fit


def teacher_eval_embeddings(held_out: EvalSet, teacher_folder: str, max_length: int,
                            common: dict) -> tuple[dict, int]:
    """The teacher's embeddings of the held-out texts, users and catalog (cached): ({part: array},
    how many were encoded now)."""
    teacher_emb, n_encoded = {}, 0
    parts = (("texts", [r.text for r in held_out.texts]), ("users", held_out.user_texts),
             ("items", held_out.catalog_texts))
    for part, texts in parts:
        key = cache_key(teacher_folder, max_length, texts)
        teacher_emb[part], n = cached_embeddings(
            texts, cache_root(), key, label=f"teacher embeddings (evaluation {part})", **common)
        n_encoded += n
    return teacher_emb, n_encoded


def teacher_row(teacher, teacher_emb: dict, held_out: EvalSet, teacher_dim: int,
                speed_texts: list[str]) -> dict:
    """The teacher's own evaluation row (and its top-10 lists into teacher_emb["top"])."""
    teacher_emb["top"] = recommended(teacher_emb["users"], teacher_emb["items"],
                                     held_out.catalog_ids, held_out.cases)
    sources = [r.source for r in held_out.texts]
    row = {"dim": teacher_dim,
           "agreement": agreement(teacher_emb["texts"], teacher_emb["texts"], sources),
           "retrieval": retrieval(teacher_emb["users"], teacher_emb["items"],
                                  held_out.catalog_ids, held_out.cases)}
    start = time.perf_counter()
    teacher(speed_texts)
    row["pytorch_sentences_per_s"] = round(len(speed_texts) / (time.perf_counter() - start), 1)
    return row


def speed_sample(held_out: EvalSet, n: int, seed: int) -> list[str]:
    texts = [r.text for r in held_out.texts]
    return [texts[i] for i in np.random.default_rng(seed).permutation(len(texts))[:n]]


def _encoder(module, tokenizer, max_length: int):
    from towerlite.models import encode_with

    return lambda texts: encode_with(module, tokenizer, texts, 32, max_length)


def evaluate_row(encode, held_out: EvalSet, teacher_emb: dict, speed_texts: list[str]) -> dict:
    """Agreement with the teacher per source, retrieval (and asymmetric retrieval: items by the
    teacher, users by this model, when it lives in the teacher's space), PyTorch speed."""
    texts = encode([r.text for r in held_out.texts])
    users, items = encode(held_out.user_texts), encode(held_out.catalog_texts)
    ids, cases, top = held_out.catalog_ids, held_out.cases, teacher_emb["top"]
    row = {"dim": int(texts.shape[1]),
           "agreement": agreement(teacher_emb["texts"], texts, [r.source for r in held_out.texts]),
           "retrieval": retrieval(users, items, ids, cases, teacher_top=top)}
    if texts.shape[1] == teacher_emb["items"].shape[1]:
        row["retrieval_teacher_items"] = retrieval(users, teacher_emb["items"], ids, cases,
                                                   teacher_top=top)
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


@dataclass
class DistillRun:
    """One run's state, setup → teacher → train → evaluate → report."""

    cfg: DistillConfig
    dist: Dist
    teacher_folder: str = ""
    teacher_dim: int = 0
    started: float = 0.0  # time.monotonic() once the checks passed
    timings: dict = field(default_factory=dict)
    train_data: TrainSet | None = None
    held_out: EvalSet | None = None
    teacher: LazyTeacher | None = None
    train_key: str = ""  # the training texts' cache key (each candidate's run key holds it)
    teacher_train: np.ndarray | None = None  # the teacher's embeddings of the training texts
    teacher_eval: dict = field(default_factory=dict)  # ... of the held-out parts, {part: array}
    trained: dict = field(default_factory=dict)  # candidate → its training result
    rows: dict = field(default_factory=dict)  # the evaluation: model → its row
    served: str = ""  # the candidate copied to OUT/model

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def setup(self) -> None:
        """The checks, then the training texts and the held-out evaluation set."""
        import torch

        cfg = self.cfg
        self.teacher_folder, self.teacher_dim = preflight(cfg)
        torch.manual_seed(cfg.seed)
        self.started = time.monotonic()
        log.info("loading the corpora and interactions (training part; held-out texts and users "
                 "kept apart)")
        catalogs = Catalogs()
        self.train_data = training_set(cfg.mix, cfg.history_items, cfg.seed, catalogs,
                                       tuple(cfg.user_datasets))
        self.held_out = eval_set(cfg.eval_texts_per_source, cfg.eval_users, cfg.history_items,
                                 cfg.seed, cfg.eval_catalog_items, catalogs)
        del catalogs
        self.timings["data_s"] = round(time.monotonic() - self.started, 1)
        train_data, held_out = self.train_data, self.held_out
        log.info(f"training texts: {len(train_data.texts):,} ({len(train_data.pairs):,} user–item "
                 f"pairs); held-out: {len(held_out.texts)} texts, {len(held_out.cases)} MovieLens "
                 f"users over {len(held_out.catalog_ids):,} movies")

    def embed_teacher(self) -> None:
        """The teacher's embeddings of every training and held-out text, from the cache where
        an earlier run left them (each process computes its share of the missing chunks)."""
        cfg, dist = self.cfg, self.dist
        started, self.teacher = time.monotonic(), LazyTeacher(cfg.teacher, cfg.max_length)
        cache_dir = cache_root()
        common = dict(encode=self.teacher, chunk=cfg.teacher_chunk, rank=dist.rank,
                      world=dist.world, barrier=dist.barrier, progress=dist.rank == 0)
        texts = self.train_data.texts
        self.train_key = cache_key(self.teacher_folder, cfg.max_length, texts)
        self.teacher_train, n_train = cached_embeddings(
            texts, cache_dir, self.train_key, label="teacher embeddings (training texts)",
            **common)
        self.teacher_eval, n_eval = teacher_eval_embeddings(self.held_out, self.teacher_folder,
                                                            cfg.max_length, common)
        self.timings["teacher_s"] = round(time.monotonic() - started, 1)
        self.timings["teacher_texts_encoded"] = n_train + n_eval
        n_embeddings = len(self.teacher_train) + sum(map(len, self.teacher_eval.values()))
        log.info(f"teacher embeddings: {n_embeddings:,} ({n_train + n_eval:,} encoded now, the "
                 f"rest from {cache_dir}) in {self.timings['teacher_s']} s")

    def train_candidates(self) -> None:
        """Every candidate not trained yet by this configuration; saved by the first process."""
        cfg, dist, train_data = self.cfg, self.dist, self.train_data
        started, ckpt_dir = time.monotonic(), self.out / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shared = {k: v for k, v in cfg.to_json().items()
                  if k not in ("out", "candidates", "students", "serve")}
        for cand in cfg.candidates:
            spec = cfg.students[cand.student]
            run_key = hash_key(cand, spec, self.train_key, shared)
            folder = self.out / "candidates" / cand.name
            prov_file = folder / "towerlite_student.json"
            if prov_file.is_file() and json.loads(prov_file.read_text()).get("run_key") == run_key:
                log.info(f"[{cand.name}] already trained ({folder}); skipping")
                self.trained[cand.name] = json.loads(prov_file.read_text())["training"]
                continue
            log.info(f"[{cand.name}] student {cand.student} ({spec.start}, layers "
                     f"{list(spec.layers or []) or 'all'}), loss {cand.loss}")
            module, tok, fit = _start_student(spec, self.teacher_dim, train_data.texts,
                                              self.teacher_train, cfg.max_length)
            result = train(module, tok, train_data.texts, self.teacher_train, train_data.pairs,
                           cand.loss, cfg, ckpt_dir / f"{cand.name}.pt", run_key, dist)
            result["projection_fit_cosine"] = fit
            self.trained[cand.name] = result
            if dist.rank == 0:
                save_student(module, tok, folder, cfg.max_length, {
                    "run_key": run_key, "candidate": cand.name, "student": cand.student,
                    "start": spec.start, "layers": list(spec.layers) if spec.layers else None,
                    "projection": spec.project, "teacher": cfg.teacher,
                    "teacher_dim": self.teacher_dim, "loss": cand.loss, "training": result})
            dist.barrier()
        self.timings["train_s"] = round(time.monotonic() - started, 1)

    def evaluate(self) -> None:
        """A row per model (the teacher, the student start as published, each student before
        training, each candidate), then the served candidate copied to OUT/model."""
        from towerlite.models import SentenceEncoder

        started = time.monotonic()
        cfg, held_out, teacher_emb = self.cfg, self.held_out, self.teacher_eval
        max_length = cfg.max_length
        speed_texts = speed_sample(held_out, cfg.speed_texts, cfg.seed)
        log.info("evaluating on held-out texts and users")
        rows = {"teacher": teacher_row(self.teacher, teacher_emb, held_out, self.teacher_dim,
                                       speed_texts)}
        published = SentenceEncoder("student-start", attn_implementation="eager")
        rows["student-start (as published)"] = evaluate_row(
            lambda texts: published.encode(texts, max_length=max_length), held_out, teacher_emb,
            speed_texts)
        for name, spec in cfg.students.items():
            module, tok, _ = _start_student(spec, self.teacher_dim, self.train_data.texts,
                                            self.teacher_train, max_length)
            rows[f"{name} before training"] = evaluate_row(_encoder(module, tok, max_length),
                                                           held_out, teacher_emb, speed_texts)
        for cand in cfg.candidates:
            enc = SentenceEncoder(str(self.out / "candidates" / cand.name),
                                  attn_implementation="eager")
            rows[cand.name] = evaluate_row(
                lambda texts, encoder=enc: encoder.encode(texts, max_length=max_length),
                held_out, teacher_emb, speed_texts)
            rows[cand.name].update(student=cand.student, loss=cand.loss,
                                   layers=enc.module.transformer.config.num_hidden_layers)
        self.rows = {k: v for k, v in rows.items() if v is not None}
        self.served = _serve_choice(cfg, self.rows)
        _copy_atomic(self.out / "candidates" / self.served, self.out / "model")
        self.timings["eval_s"] = round(time.monotonic() - started, 1)

    def report(self) -> dict:
        """OUT/distill_report.json: config, data, training, evaluation, timings, versions."""
        cfg, out, train_data, held_out = self.cfg, self.out, self.train_data, self.held_out
        self.timings["total_s"] = round(time.monotonic() - self.started, 1)
        eval_sources = _count([r.source for r in held_out.texts])
        data = {"training_texts": len(train_data.texts), "pairs": len(train_data.pairs),
                "per_source": dict(sorted(_count(train_data.sources).items())),
                "eval_texts_per_source": dict(sorted(eval_sources.items())),
                "eval_users": len(held_out.cases), "catalog_items": len(held_out.catalog_ids)}
        report = {
            "teacher": cfg.teacher, "teacher_folder": self.teacher_folder,
            "teacher_dim": self.teacher_dim, "config": cfg.to_json(), "data": data,
            "training": self.trained, "evaluation": self.rows, "served": self.served,
            "model_folder": str(out / "model"),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")), "timings": self.timings,
            "peak_rss_mb": peak_rss_mb(), "machine": cpu_info(),
            "versions": {p: version(p) for p in ("torch", "transformers", "tokenizers", "numpy")},
        }
        write_json_atomic(out / "distill_report.json", report)
        return report


def run(cfg: DistillConfig) -> dict:
    """The whole run; the report on the first process, {} on the others (under torchrun only
    the first logs, evaluates and reports)."""
    dist = init_distributed()
    with first_rank_logs(dist):
        distill = DistillRun(cfg, dist)
        distill.setup()
        distill.embed_teacher()
        distill.train_candidates()
        dist.close()  # evaluation runs on the first process alone
        if dist.rank != 0:
            return {}
        distill.evaluate()
        return distill.report()



def _count(values) -> dict:
    from collections import Counter

    return dict(Counter(values))


def peak_rss_mb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
