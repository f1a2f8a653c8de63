"""How close a variant's embeddings are to the reference's, on the same texts."""

from __future__ import annotations

import numpy as np


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def top_k_neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    sims = _unit(emb) @ _unit(emb).T
    np.fill_diagonal(sims, -np.inf)  # a text is not its own neighbour
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def parity(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> dict:
    """mean/min cosine between matching rows, and mean top-k neighbour overlap (0..1)."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape}, "
                         f"candidate {candidate.shape}")
    cos = np.sum(_unit(reference) * _unit(candidate), axis=1)
    k = min(k, len(reference) - 1)
    ref_nn, cand_nn = top_k_neighbours(reference, k), top_k_neighbours(candidate, k)
    overlap = np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_nn, cand_nn)]) if k > 0 else 1.0


    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            f"top{k}_overlap": float(overlap), "texts": int(len(reference))}
