"""Each row's encoder behind one batching loop (tokenization included, batches optionally
sorted by token count), and how a row is timed: sentences/s, best of `repeats`
(export.speed.throughput)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from towerlite.runtime import VARIANT_FILES, pad_batch

from ..speed import throughput


def batched(run: Callable[[np.ndarray, np.ndarray], np.ndarray],
            tokenize: Callable[[list[str]], list[list[int]]], pad_id: int, batch_size: int,
            sort_by_length: bool) -> Callable[[list[str]], np.ndarray]:
    """texts → embeddings in input order, the same loop as OnnxEncoder.encode: tokenize once,
    optionally order by token count, pad each batch to its longest text, run."""
    def encode(texts: list[str]) -> np.ndarray:
        tokens = tokenize(texts)
        order = (np.argsort([len(t) for t in tokens], kind="stable") if sort_by_length
                 else np.arange(len(texts)))
        out = None
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            emb = run(*pad_batch([tokens[j] for j in idx], pad_id))
            if out is None:
                out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
            out[idx] = emb
        return out
    return encode


def hf_tokenize(tokenizer, max_length: int) -> Callable[[list[str]], list[list[int]]]:
    return lambda texts: tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def torch_encoder(encoder, max_length: int, batch_size: int, sort_by_length: bool):
    """A towerlite.models.SentenceEncoder's module behind the shared batching loop."""
    import torch

    def run(ids, mask):
        with torch.inference_mode():
            return encoder.module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
    return batched(run, hf_tokenize(encoder.tokenizer, max_length), encoder.tokenizer.pad_token_id,
                   batch_size, sort_by_length)


def measure(encode, texts: list[str], repeats: int) -> tuple[float, np.ndarray]:
    """sentences/s (best of `repeats`, export.speed.throughput) and the embeddings of the last
    pass."""
    last: dict[str, np.ndarray] = {}

    def recording(t: list[str]) -> np.ndarray:
        out = encode(t)
        if len(t) == len(texts):
            last["emb"] = out
        return out
    return throughput(recording, texts, repeats), last["emb"]


def weights_mb(folder: str | Path) -> float | None:
    files = [p for p in Path(folder).glob("*")
             if p.suffix in (".safetensors", ".bin") and p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 1) if files else None


def onnx_variants(export_dir: Path) -> list[tuple[str, Path]]:
    """(variant name, path) of every model*.onnx, in the order towerlite.runtime.VARIANT_FILES
    names them."""
    names = {f: v for v, f in VARIANT_FILES.items()}
    found = sorted(export_dir.glob("model*.onnx"))
    rank = list(VARIANT_FILES.values())
    found.sort(key=lambda p: (rank.index(p.name) if p.name in rank else len(rank), p.name))
    return [(names.get(p.name, p.stem), p) for p in found]


def param_count(encoder) -> int:
    return sum(p.numel() for p in encoder.module.parameters())
