"""What a fine-tuning run does, as one small config (JSON-loadable, recorded in the report).

The recipes of docs/quality.md are presets: `multi` (the default: one model on both datasets'
interactions), `fast` (the same on a 3-layer model at 64 tokens, for the latency goals),
`movies` and `books` (one domain each, the same number of steps per domain as `multi` gives
it), `teacher` (the large model fine-tuned, to be distilled), `demo` (`towerlite demo`'s few
minutes), `tiny` (tests).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from towerlite.errors import TowerliteError

from ..config import known_fields, read_config

KNOWN_DATASETS = ("movielens", "bookcrossing")


@dataclass
class FinetuneConfig:
    out: str = "runs/finetune"
    # registry name (student-start, teacher) or an HF folder, e.g. a distilled student
    start: str = "student-start"
    layers: tuple[int, ...] | None = None  # keep only these transformer layers (None = all)
    datasets: dict[str, float] = field(
        default_factory=lambda: {"movielens": 1.0, "bookcrossing": 1.0})
    steps: int = 400  # each step is one dataset's batch, drawn by the weights above
    batch_size: int = 32  # users (and their positives) per step: the in-batch negatives
    history_items: int = 10  # liked items rendered into the user text (as `towerlite eval`)
    max_length: int = 128
    temperature: float = 0.05
    symmetric: bool = True  # also each item against the batch's users
    logq_correction: bool = True
    # catalog items as extra negatives (0 = in-batch only; the whole catalog when smaller)
    bank_size: int = 4096
    bank_refresh: int = 100  # steps between re-encoding the bank with the current weights
    # the token embeddings: half of MiniLM's weights, sparse gradients
    freeze_embeddings: bool = True
    lr: float = 1e-4
    warmup_fraction: float = 0.1
    checkpoint_every: int = 50
    seed: int = 0
    # start vs fine-tuned on distill's held-out texts (forgetting) and MovieLens users
    evaluate: bool = True
    teacher: str = "teacher"  # the reference the text agreement is measured against
    eval_texts_per_source: int = 150
    eval_users: int = 600
    eval_catalog_items: int = 0
    speed_texts: int = 128

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FinetuneConfig:
        data = known_fields(cls, data)
        if data.get("layers") is not None:
            data["layers"] = tuple(data["layers"])
        return cls(**data)

    @classmethod
    def read(cls, path: Path) -> dict:
        return read_config(cls, path, "finetune")


def check(cfg: FinetuneConfig) -> None:
    if (not cfg.datasets or set(cfg.datasets) - set(KNOWN_DATASETS)
            or any(weight <= 0 for weight in cfg.datasets.values())):
        raise TowerliteError(f"datasets must weight some of {', '.join(KNOWN_DATASETS)} with "
                             f"positive numbers; got {cfg.datasets}")
    for key, minimum in (("steps", 1), ("batch_size", 2), ("history_items", 1), ("max_length", 8),
                         ("checkpoint_every", 1), ("bank_refresh", 1), ("bank_size", 0)):
        if getattr(cfg, key) < minimum:
            raise TowerliteError(f"{key} must be at least {minimum}, got {getattr(cfg, key)}")
    if not 0 < cfg.temperature <= 10:
        raise TowerliteError(f"temperature must be in (0, 10], got {cfg.temperature}")


PRESETS = {
    "multi": {},
    # the latency-bound served student: layers 0, 2, 4 of MiniLM, user texts cut at 64 tokens
    # (half the encoder time of `multi`; docs/benchmarks.md), more steps for the same budget
    "fast": dict(layers=(0, 2, 4), max_length=64, steps=600, evaluate=False),
    "movies": dict(datasets={"movielens": 1.0}, steps=200),
    "books": dict(datasets={"bookcrossing": 1.0}, steps=200),
    # recipe 2's first half on a CPU budget: the 110M teacher on MovieLens (~10 s a step, 2 cores)
    "teacher": dict(start="teacher", datasets={"movielens": 1.0}, steps=60),
    # `towerlite demo`: the distilled demo student adapted to MovieLens in about 4 minutes
    "demo": dict(datasets={"movielens": 1.0}, steps=100, evaluate=False),
    "tiny": dict(layers=(0, 5), steps=12, batch_size=8, max_length=64, bank_size=64,
                 bank_refresh=4, checkpoint_every=4, eval_texts_per_source=16, eval_users=40,
                 eval_catalog_items=300, speed_texts=16),

}
