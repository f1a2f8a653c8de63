"""Embeddings computed once and kept on disk: distill's teacher targets, eval's towers.

The teacher is the slow part (≈15–20 sentences/s on 2 cores), so embeddings are cached under
$TOWERLITE_HOME/embedding-cache/<key>/, keyed by the model's files and the exact text list. The
work is cut into chunks, each written atomically: an interrupted pass resumes at the first
missing chunk, and under torchrun every process computes its own share of chunks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


def model_fingerprint(folder: str) -> str:
    """Names, sizes and mtimes of the model's files (a folder, or one file such as an .onnx):
    changes when the model does."""
    path = Path(folder)
    if path.is_file():
        return f"{path.resolve()}:{path.stat().st_size}:{int(path.stat().st_mtime)}"
    if not path.is_dir():
        return folder
    parts = [f"{p.relative_to(path)}:{p.stat().st_size}:{int(p.stat().st_mtime)}"
             for p in sorted(path.rglob("*")) if p.is_file()]
    return f"{path.resolve()}|" + "|".join(parts)


def cache_key(model_folder: str, max_length: int, texts: list[str]) -> str:
    digest = hashlib.sha256(f"{model_fingerprint(model_folder)}|{max_length}|{len(texts)}".encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\0")
    return digest.hexdigest()[:24]


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)


def cache_root() -> Path:
    from .home import writable_home

    return writable_home() / "embedding-cache"


def cached_embeddings(texts: list[str], cache_dir: Path, key: str,
                      encode: Callable[[list[str]], np.ndarray], chunk: int = 512, rank: int = 0,
                      world: int = 1, barrier=lambda: None, progress: bool = True,
                      label: str = "model") -> tuple[np.ndarray, int]:
    """(embeddings of `texts`, number of texts this call had to encode). `encode` is only
    called for chunks missing from the cache (the teacher need not even be loaded otherwise)."""
    from tqdm.auto import tqdm

    folder = cache_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    first = folder / "00000.npy"
    if first.is_file():  # a folder keeps the chunk size it was started with, whoever resumes it
        chunk = int(np.load(first, mmap_mode="r").shape[0])
    files = [folder / f"{i:05d}.npy" for i in range(0, len(texts), chunk)]
    mine = [number for number, file in enumerate(files)
            if number % world == rank and not file.is_file()]
    todo = sum(len(texts[number * chunk:(number + 1) * chunk]) for number in mine)
    with tqdm(total=todo, unit="text", desc=f"{label}", disable=not (progress and todo)) as bar:
        for number in mine:
            part = texts[number * chunk:(number + 1) * chunk]
            _save_atomic(files[number], encode(part).astype(np.float32))
            bar.update(len(part))
    barrier()
    out = np.concatenate([np.load(file) for file in files])
    if len(out) != len(texts):
        raise RuntimeError(f"embedding cache {folder} holds {len(out)} rows for {len(texts)} "
                           "texts; delete it")

    return out, todo
