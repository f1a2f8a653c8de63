"""Run an exported encoder in onnxruntime: texts → sentence embeddings. The one runtime piece
export (parity, speed), serving (deploy, catalog) and evaluation share, so it lives in the base.

Tokenization uses the `tokenizers` library on the tokenizer.json copied beside the ONNX file,
exactly as the Triton python model does, so what is measured here is what is served.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from towerlite.errors import TowerliteError

# What `towerlite export` writes for each variant: the contract between export, deploy and eval.
VARIANT_FILES = {"fp32": "model.onnx", "opt": "model_opt.onnx",
                 "int8_dynamic": "model_int8_dynamic.onnx", "int8_static": "model_int8_static.onnx",
                 "fp16": "model_fp16.onnx"}


def load_tokenizer(tokenizer_json: Path, max_length: int) -> tuple[Tokenizer, int]:
    """The tokenizer, truncating at `max_length` and not padding (batches are padded to their
    longest text here, not to the fixed length tokenizer.json may name), and its pad id."""
    tok = Tokenizer.from_file(str(tokenizer_json))
    pad_id = (tok.padding or {}).get("pad_id", 0)
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    return tok, pad_id


def pad_batch(token_ids: list[list[int]], pad_id: int,
              buckets: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64, padded on the right to the longest sequence or, given
    `buckets`, to the first bucket that holds it (the served tokenizer's widths)."""
    width = max(len(t) for t in token_ids)
    width = next((b for b in sorted(buckets) if b >= width), width)
    ids = np.full((len(token_ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), width), dtype=np.int64)
    for row, t in enumerate(token_ids):
        ids[row, :len(t)] = t
        mask[row, :len(t)] = 1
    return ids, mask


def session(path: Path, threads: int = 2,
            providers: list[str] | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Thread spinning stays on: turning it off doubled batch-1 p50 in-process (prototype).
    return ort.InferenceSession(str(path), options,
                                providers=providers or ["CPUExecutionProvider"])


class OnnxEncoder:
    """An exported sentence encoder: `encode(texts)` → float32 (n, dim), L2-normalized."""

    def __init__(self, onnx_path: str | Path, tokenizer_json: str | Path | None = None,
                 max_length: int = 128, threads: int = 2, providers: list[str] | None = None):
        onnx_path = Path(onnx_path)
        tokenizer_json = (Path(tokenizer_json) if tokenizer_json
                          else onnx_path.parent / "tokenizer.json")
        for path in (onnx_path, tokenizer_json):
            if not path.is_file():
                raise TowerliteError(f"{path}: no such file (an exported encoder needs the .onnx "
                                     "file and tokenizer.json beside it)")

        # what a worker process needs to build the same encoder (serving.catalog.embed_catalog)
        self.path, self.tokenizer_json = onnx_path, tokenizer_json
        self.max_length, self.threads = max_length, threads
        self.tokenizer, self.pad_id = load_tokenizer(tokenizer_json, max_length)
        self.session = session(onnx_path, threads, providers)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dim = self.session.get_outputs()[0].shape[-1]

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a list of str")
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask}
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]

    def encode(self, texts: list[str], batch_size: int = 32,
               sort_by_length: bool = True) -> np.ndarray:
        """Embeddings in the order of `texts`; batches hold texts of similar length (less
        padding)."""

        tokens = self.token_ids(texts)
        order = np.argsort([len(t) for t in tokens], kind="stable") if sort_by_length \
            else np.arange(len(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i in range(0, len(texts), batch_size):
            idx = order[i:i + batch_size]
            out[idx] = self.run(*pad_batch([tokens[j] for j in idx], self.pad_id))
        return out
