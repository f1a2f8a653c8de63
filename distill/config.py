"""What a distillation run does, as one small config (JSON-loadable, recorded in the report).

A run trains every candidate — a student architecture with a loss — from the same cached
teacher embeddings, evaluates all of them beside the teacher and the undistilled start, and
writes each candidate's model folder. `serve` names the candidate copied to OUT/model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from towerlite.errors import TowerliteError


@dataclass(frozen=True)
class StudentSpec:
    """A student: the start model, which of its transformer layers to keep (None = all), and
    whether a linear projection head maps it into the teacher's space."""

    start: str = "student-start"
    layers: tuple[int, ...] | None = None
    project: bool = True


@dataclass(frozen=True)
class Candidate:
    name: str
    student: str  # a key of DistillConfig.students
    loss: str  # "embed" (cosine to the teacher embedding) or "embed+score" (+ in-batch score KL)


# Texts drawn from the training part of each source (the held-out 2% never): the mix.
DEFAULT_MIX = {"brown": 3500, "imdb": 600, "rotten_tomatoes": 900, "wordnet": 3500,
               "movielens-1m": 3000, "book-crossing": 3000, "user-history": 2000}


@dataclass
class DistillConfig:
    out: str = "runs/distill"
    teacher: str = "teacher"
    students: dict[str, StudentSpec] = field(default_factory=lambda: {
        "minilm6-proj": StudentSpec(layers=None),
        "minilm3-proj": StudentSpec(layers=(0, 2, 4)),
    })
    candidates: tuple[Candidate, ...] = (
        Candidate("minilm6-proj", "minilm6-proj", "embed"),
        Candidate("minilm3-proj", "minilm3-proj", "embed"),
    )
    # a candidate name, or best-<student> (best retrieval NDCG@10)
    serve: str = "best-minilm6-proj"
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    user_datasets: tuple[str, ...] = ("movielens", "bookcrossing")  # user-history texts' sources

    history_items: int = 10  # liked items rendered into a user text
    max_length: int = 128
    epochs: int = 2
    batch_size: int = 32  # global, whatever the number of processes
    pair_batch_size: int = 16  # user–item pairs per step for the score loss
    score_weight: float = 1.0
    score_temperature: float = 0.05
    lr: float = 1e-4
    warmup_fraction: float = 0.1
    checkpoint_every: int = 100  # steps
    seed: int = 0
    eval_texts_per_source: int = 150  # held-out texts per corpus source, for agreement
    eval_users: int = 600  # held-out MovieLens users for retrieval (0 = all held out)
    # 0 = the whole movie catalog (a smaller one keeps the users' items)
    eval_catalog_items: int = 0
    speed_texts: int = 256  # held-out texts each model's PyTorch speed is measured on
    teacher_chunk: int = 512  # texts per embedding-cache file (the unit of resume)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DistillConfig:
        data = known_fields(cls, data)
        if "students" in data:
            data["students"] = {
                name: StudentSpec(**{**spec, "layers": tuple(spec["layers"])
                                     if spec.get("layers") else None})
                for name, spec in data["students"].items()}
        if "candidates" in data:
            data["candidates"] = tuple(Candidate(**c) for c in data["candidates"])
        if "user_datasets" in data:
            data["user_datasets"] = tuple(data["user_datasets"])
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> dict:
        return read_config(cls, path, "distill")


def known_fields(cls, data: dict) -> dict:
    """A copy of `data`, after checking it names only fields of the config class `cls`."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        known = ", ".join(sorted(f.name for f in fields(cls)))
        raise TowerliteError(f"unknown config field(s) {unknown}; known: {known}")
    return dict(data)


def read_config(cls, path: Path, kind: str) -> dict:
    """A config file's fields (only those it sets), checked as a whole `cls` config."""
    try:
        data = json.loads(Path(path).read_text())
        cls.from_json(data)
        return data
    except FileNotFoundError:
        raise TowerliteError(f"config {path}: no such file") from None
    except (json.JSONDecodeError, TypeError, AttributeError, TowerliteError) as exc:
        raise TowerliteError(f"config {path}: not a valid {kind} config ({exc})") from None


# The tests' and the demo's quick run: a 2-layer student, a few hundred texts, a few steps.
TINY = dict(
    students={"minilm2-proj": {"start": "student-start", "layers": [0, 5], "project": True}},
    candidates=[{"name": "minilm2-proj", "student": "minilm2-proj", "loss": "embed+score"}],
    serve="minilm2-proj", epochs=1, batch_size=16, pair_batch_size=8, checkpoint_every=5,
    mix={"brown": 60, "imdb": 10, "rotten_tomatoes": 20, "wordnet": 60, "movielens-1m": 40,
         "book-crossing": 40, "user-history": 40},
    max_length=64, eval_texts_per_source=24, eval_users=40, eval_catalog_items=300,
    speed_texts=32, teacher_chunk=64,
)
# The default plus the score-loss candidate on the 6-layer student (about +23 min on 2 cores):
# the embed-vs-embed+score comparison in docs/distillation.md.
LOSSES = dict(candidates=[{"name": "minilm6-proj", "student": "minilm6-proj", "loss": "embed"},
                          {"name": "minilm3-proj", "student": "minilm3-proj", "loss": "embed"},
                          {"name": "minilm6-proj-score", "student": "minilm6-proj",
                           "loss": "embed+score"}])

# Same-budget 3-layer students for the cross-domain transfer comparison (docs/quality.md):
# 3,000 corpus texts + 600 user–item pairs each, from every domain or from one domain only.
def _transfer(mix: dict, user_datasets: list[str]) -> dict:
    return dict(students={"minilm3-proj": {"start": "student-start", "layers": [0, 2, 4],
                                           "project": True}},
                candidates=[{"name": "minilm3-proj", "student": "minilm3-proj", "loss": "embed"}],
                serve="minilm3-proj", mix={**mix, "user-history": 600}, user_datasets=user_datasets,
                speed_texts=64)


TRANSFER = {
    "transfer-multi": _transfer({"brown": 550, "imdb": 150, "rotten_tomatoes": 300, "wordnet": 550,
                                 "movielens-1m": 725, "book-crossing": 725},
                                ["movielens", "bookcrossing"]),
    "transfer-movies": _transfer({"imdb": 1000, "rotten_tomatoes": 1000, "movielens-1m": 1000},
                                 ["movielens"]),
    "transfer-books": _transfer({"book-crossing": 3000}, ["bookcrossing"]),
}
# `towerlite demo`'s distillation: the 6-layer student on ≈2,900 texts, a few minutes cold
# (the 3-layer one kept 31% of the teacher's Recall@10 on this budget; docs/quality.md).
DEMO = dict(
    students={"minilm6-proj": {"start": "student-start", "layers": None, "project": True}},
    candidates=[{"name": "minilm6-proj", "student": "minilm6-proj", "loss": "embed"}],
    serve="minilm6-proj",
    mix={"brown": 400, "imdb": 60, "rotten_tomatoes": 120, "wordnet": 400, "movielens-1m": 600,
         "book-crossing": 400, "user-history": 300},
    eval_texts_per_source=40, eval_users=100, eval_catalog_items=600, speed_texts=64,
)
# Recipe 2's second half (docs/quality.md): a 6-layer student distilled from a fine-tuned teacher
# (`--teacher runs/finetune-teacher/model`) on MovieLens item and user texts, with the score loss
# on user–item pairs carrying the teacher's ranking; a little Brown/WordNet keeps general text.
FROM_FINETUNED = dict(
    students={"minilm6-proj": {"start": "student-start", "layers": None, "project": True}},
    candidates=[{"name": "minilm6-proj", "student": "minilm6-proj", "loss": "embed+score"}],
    serve="minilm6-proj",
    mix={"brown": 300, "wordnet": 300, "movielens-1m": 2000, "user-history": 1500},
    user_datasets=["movielens"], speed_texts=64,
)
PRESETS = {"default": {}, "tiny": TINY, "losses": LOSSES, "demo": DEMO,
           "from-finetuned": FROM_FINETUNED, **TRANSFER}


def check(cfg: DistillConfig) -> None:
    """Config errors, before anything is loaded."""
    known_users = ("movielens", "bookcrossing")
    if not cfg.user_datasets or set(cfg.user_datasets) - set(known_users):
        raise TowerliteError(f"user_datasets must name some of {', '.join(known_users)}; "
                             f"got {list(cfg.user_datasets)}")
    for cand in cfg.candidates:
        if cand.student not in cfg.students:
            raise TowerliteError(f"candidate {cand.name!r} names unknown student "
                                 f"{cand.student!r}; students: {', '.join(cfg.students)}")
        if cand.loss not in ("embed", "embed+score"):
            raise TowerliteError(f"candidate {cand.name!r}: unknown loss {cand.loss!r} "
                                 "(embed, embed+score)")
    names = [c.name for c in cfg.candidates]
    if not names or len(set(names)) != len(names):
        raise TowerliteError(f"candidates must be a non-empty list of distinct names, got {names}")
    if cfg.serve not in names and cfg.serve.removeprefix("best-") not in cfg.students:
        raise TowerliteError(f"serve={cfg.serve!r} is neither a candidate nor best-<student>")
    if sum(cfg.mix.values()) <= 0 or any(v < 0 for v in cfg.mix.values()):
        raise TowerliteError(f"the data mix is empty or negative: {cfg.mix}")
    minimums = (("epochs", 1), ("batch_size", 2), ("max_length", 8), ("checkpoint_every", 1))
    for key, minimum in minimums:

        if getattr(cfg, key) < minimum:
            raise TowerliteError(f"{key} must be at least {minimum}")
