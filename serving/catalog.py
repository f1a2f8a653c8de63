"""The served catalog: items from the dataset loaders, rendered by `towerlite.data.render`,
embedded by the item tower in batches, cached per model, written for the scorer.

    items = catalog_items(["movielens", "bookcrossing"])     # item_id, domain, text; sorted
    emb = embed_catalog(items, encoder)                       # (n, dim) float32, cached
    write_catalog(folder, items, emb, info)                   # what the scorer memory-maps

Order: by domain (in the order the datasets were named), then by id as UTF-8 bytes. A domain
is one contiguous range, so a domain filter is a slice of the matrix, and ids are sorted within
it, so the scorer finds EXCLUDE ids by binary search without building a dictionary.

Cache: $TOWERLITE_HOME/catalog-embeddings/<model sha>/<texts sha>/ holds chunk files written
atomically as they finish (an interrupted run resumes) and embeddings.npy once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.data.catalog import prepare_items
from towerlite.errors import TowerliteError

CATALOGS = {"movielens": ("movielens",), "bookcrossing": ("bookcrossing",),
            "both": ("movielens", "bookcrossing")}
CHUNK = 4096


def catalog_names(choice: str) -> tuple[str, ...]:
    try:
        return CATALOGS[choice]
    except KeyError:
        raise TowerliteError(f"unknown catalog {choice!r}; choose from {', '.join(CATALOGS)}") \
            from None


def catalog_items(names: Sequence[str], limit: int | None = None) -> pd.DataFrame:
    """The items of the named datasets (`limit`: the first N of each, for trials and tests)."""
    from towerlite.data import load_dataset

    frames = []
    for name in names:
        items = load_dataset(name).items
        frames.append(items.head(limit) if limit else items)
    items = pd.concat(frames, ignore_index=True)
    return prepare_items(items, list(dict.fromkeys(items["domain"])))


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def texts_key(texts: Sequence[str], max_length: int) -> str:
    h = hashlib.sha256(f"max_length={max_length}\n".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    tmp.replace(path)


def embedding_providers() -> list[str]:
    """onnxruntime's providers for embedding a catalog: CUDA first where this onnxruntime has it
    (onnxruntime-gpu on a machine with a GPU: one process, large batches; the 3-layer student at
    fp16 embedded 219k catalog texts/s on an H100, docs/benchmarks.md), else the CPU."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def embed_catalog(texts: Sequence[str], encoder, cache_dir: Path | None = None,
                  batch_size: int = 64, progress: bool = True, workers: int = 1,
                  chunk: int | None = None) -> np.ndarray:
    """(n, dim) float32 embeddings of `texts` by `encoder` (a towerlite.runtime.OnnxEncoder),
    chunk by chunk with a progress bar; chunks and the result are cached in `cache_dir`.

    `workers` > 1: the missing chunks are encoded by that many processes, each with its own
    onnxruntime session over the encoder's files and the encoder's threads split between them
    (chunks are the same either way, so are the vectors); each writes its chunks into the cache
    as they finish, so a killed run resumes at the chunks still missing, with any worker count."""
    from tqdm import tqdm

    n, chunk = len(texts), chunk or CHUNK
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        final = cache_dir / "embeddings.npy"
        if final.is_file():
            emb = np.load(final)
            if emb.shape == (n, encoder.dim):
                return emb
    out = np.zeros((n, encoder.dim), dtype=np.float32)
    bar = tqdm(total=n, unit="item", desc="embedding catalog", disable=not progress,
               dynamic_ncols=True)
    todo = []
    for c, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        chunk_file = cache_dir / f"chunk-{c:05d}.npy" if cache_dir is not None else None
        if chunk_file is not None and chunk_file.is_file():
            out[start:stop] = np.load(chunk_file)
            bar.update(stop - start)
        else:
            todo.append((start, stop, chunk_file))
    if workers > 1 and len(todo) > 1:
        for start, stop, part in _encode_in_processes(texts, todo, encoder, batch_size, workers):
            out[start:stop] = part
            bar.update(stop - start)
    else:
        for start, stop, chunk_file in todo:
            out[start:stop] = _encode_chunk(encoder, texts[start:stop], batch_size, chunk_file)
            bar.update(stop - start)
    bar.close()
    if cache_dir is not None:
        _save_atomic(cache_dir / "embeddings.npy", out)
        for chunk_file in cache_dir.glob("chunk-*.npy"):
            chunk_file.unlink(missing_ok=True)
    return out


def _encode_chunk(encoder, texts: Sequence[str], batch_size: int,
                  chunk_file: Path | None) -> np.ndarray:
    part = encoder.encode(list(texts), batch_size=batch_size)
    if chunk_file is not None:
        _save_atomic(chunk_file, part)
    return part


_WORKER_ENCODER = None  # the encoder of a worker process (_encode_in_processes)


def _start_worker(onnx: str, tokenizer_json: str, max_length: int, threads: int) -> None:
    from towerlite.runtime import OnnxEncoder

    global _WORKER_ENCODER
    _WORKER_ENCODER = OnnxEncoder(onnx, tokenizer_json, max_length=max_length, threads=threads)


def _worker_chunk(start: int, stop: int, texts: list[str], batch_size: int,
                  chunk_file: Path | None) -> tuple[int, int, np.ndarray]:
    return start, stop, _encode_chunk(_WORKER_ENCODER, texts, batch_size, chunk_file)


def _encode_in_processes(texts, todo, encoder, batch_size: int, workers: int):
    """(start, stop, vectors) of each chunk in `todo` as worker processes finish them. Spawned,
    not forked: the parent's onnxruntime threads must not be copied mid-state."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, getattr(encoder, "threads", workers) // workers)
    args = (str(encoder.path), str(encoder.tokenizer_json), encoder.max_length, threads)
    with ProcessPoolExecutor(min(workers, len(todo)), multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=args) as pool:
        futures = [pool.submit(_worker_chunk, start, stop, list(texts[start:stop]), batch_size,
                               chunk_file) for start, stop, chunk_file in todo]
        for future in as_completed(futures):
            yield future.result()


def cache_dir_for(model_sha: str, texts: Sequence[str], max_length: int) -> Path:
    from towerlite.home import writable_home

    key = texts_key(texts, max_length)[:16]
    return writable_home() / "catalog-embeddings" / model_sha[:16] / key


def write_catalog(folder: Path, items: pd.DataFrame, embeddings: np.ndarray, info: dict) -> dict:
    """The scorer's files: embeddings_t.npy (dim, n), item_ids.npy (bytes), catalog.json."""
    if len(items) != embeddings.shape[0]:
        raise ValueError("items and embeddings differ in length")
    folder.mkdir(parents=True, exist_ok=True)
    _save_atomic(folder / "embeddings_t.npy", np.ascontiguousarray(embeddings.T, dtype=np.float32))
    ids = np.array([s.encode("utf-8") for s in items["item_id"]])
    _save_atomic(folder / "item_ids.npy", ids)
    domains = []
    values = items["domain"].to_numpy()
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            domains.append({"name": str(values[start]), "start": start, "stop": i})
            start = i
    names = [d["name"] for d in domains]
    if len(names) != len(set(names)):
        raise ValueError("each domain must be one contiguous range (use prepare_items)")
    meta = {"count": int(len(items)), "dim": int(embeddings.shape[1]), "domains": domains, **info}
    tmp = folder / ".catalog.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(folder / "catalog.json")
    return meta


def read_catalog(folder: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(embeddings (n, dim) view, item ids as str, catalog.json) of a written catalog."""
    meta = json.loads((folder / "catalog.json").read_text())
    matrix_t = np.load(folder / "embeddings_t.npy", mmap_mode="r")
    ids = np.load(folder / "item_ids.npy")
    return matrix_t.T, np.array([i.decode("utf-8") for i in ids]), meta
