"""What a repository is made of: the flavors, the python models and the file each one's model.py
comes from, and `RepositorySpec`, every setting the configs depend on."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

FLAVORS = ("portable", "native")
# the one source of every python model: deploy copies them into a repository
MODEL_CODE = Path(__file__).parents[1] / "triton_models"
FUSED = "recommend_fused"  # `recommend` as one python model (portable flavor)
# model name → the file in serving/triton_models/ that is its model.py (per flavor)
PYTHON_MODELS = {
    "portable": {"tokenizer": "tokenizer.py", "item_tokenizer": "tokenizer.py",
                 "user_encoder": "onnx_encoder.py", "item_encoder": "onnx_encoder.py",
                 "scorer": "scorer.py", FUSED: "fused.py"},
    "native": {"tokenizer": "tokenizer.py", "item_tokenizer": "tokenizer.py",
               "scorer": "scorer.py"},
}
# the history path (both flavors, when deploy is given a history tower): ensemble
# `recommend_history` = history_encoder → history_scorer (the scorer's code over the history
# tower's item table), and the same two steps in one python model (fused.py, PATH history)
HISTORY_FUSED = "recommend_history_fused"
HISTORY_MODELS = {"history_encoder": "history_encoder.py", "history_scorer": "scorer.py",
                  HISTORY_FUSED: "fused.py"}


@dataclass(frozen=True)
class RepositorySpec:
    """Everything the configs depend on. Defaults: the student (384-d, 128 tokens) on 2 cores."""

    dim: int = 384
    max_length: int = 128
    # portable: the tokenizer pads to a multiple of 8 tokens and the encoders take ragged
    # batches (each batch padded to its longest request), so no request pays for a coarse
    # bucket (the 16/32/64/128 buckets cost 12-18% more encoder time on user texts, measured);
    # native: few buckets, since Triton's onnxruntime backend batches equal shapes only and
    # TensorRT builds an engine profile per shape
    buckets: tuple[int, ...] = tuple(range(8, 129, 8))
    native_buckets: tuple[int, ...] = (16, 32, 64, 128)
    # portable encoders and the history models: batch requests of different widths (lengths)
    ragged_batches: bool = True
    # the item tower's tokenizer differs from the user tower's (e.g. teacher items, student users)
    item_tokenizer: bool = False
    max_batch_size: int = 64
    max_text_bytes: int = 65536
    default_k: int = 10
    max_k: int = 1000
    # portable encoders: python-model instances × onnxruntime threads each. Two one-thread
    # user-encoder instances were the best throughput on 2 cores in the reference build.
    user_encoder_instances: int = 2
    user_encoder_threads: int = 1
    item_encoder_instances: int = 1
    item_encoder_threads: int = 2
    scorer_instances: int = 1
    # recommend_fused (portable): the three steps of `recommend` in one python model
    fused_instances: int = 2
    fused_threads: int = 1
    # portable encoders and recommend_fused: onnxruntime on "cpu", or "gpu" (its CUDA provider,
    # GPU 0; the pip-installed Triton's python backend with onnxruntime-gpu, no NGC container)
    encoder_device: str = "cpu"
    scorer_index: str = "auto"
    # scorer / recommend_fused: the catalog's IVF index memory-mapped, one copy in the page
    # cache for every instance ("mmap"), or read into each instance ("memory")
    index_load: str = "mmap"
    tokenizer_instances: int = 1
    # dynamic batching: the user path waits little (latency), the item path longer (throughput)
    user_queue_delay_us: int = 100
    item_queue_delay_us: int = 2000
    # batched models reject a request still queued after this long (µs); a request's own
    # timeout (the client's deadline) can only be shorter
    queue_timeout_us: int = 30_000_000
    # native flavor: encoders on GPU instances (fp16 by default), or CPU instances (a CPU-only
    # node running the stock container; the portable flavor's variant, instances and threads)
    native_kind: str = "gpu"
    gpu_instances: int = 1
    tensorrt: bool = False
    tensorrt_precision: str = "FP16"
    # the history user tower (`recommend_history`): its width, 0 = not deployed
    history_dim: int = 0
    history_max_len: int = 50  # newest items a history is read to
    history_max_ids: int = 10_000  # longer HISTORY inputs are refused
    # two, not one: a directly called python model with one instance and the dynamic
    # batcher's queue policy stalled 0.5 s on ~1% of requests in Triton 2.51; one instance
    # without batching was the fastest at c=1 (p50 1.51–1.62 ms) and halved c=8
    # (docs/benchmarks.md, 2026-12-02)
    history_instances: int = 2
    # recommend_history_fused batched by Triton's dynamic batcher (and its queue policy, the
    # deadline): false with history_instances=1 is the setting fastest at c=1 (p50 1.26–1.41
    # ms on a quiet machine) at about half the c=8 throughput, requests' timeouts not enforced
    history_fused_batching: bool = True
    # history_encoder and recommend_history_fused batch the requests already queued and wait
    # for no more: over the full catalog, against a 100 µs wait, recommend_history_fused's c=1
    # p50 was lower in 5 of 6 alternated pairs and c=8 throughput higher in 3 of 6 (the python
    # backend's floor: 0.2–0.4 ms lower at c=1 in 6 of 6; docs/benchmarks.md, 2026-12-02)
    history_queue_delay_us: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RepositorySpec:
        """A spec back from a deploy report (JSON lists become tuples; fields added since the
        report was written take their defaults)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
