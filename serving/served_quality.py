"""The same evaluation through the served `recommend` ensemble (`--via-triton URL`).

Each user's text goes to `recommend` with k=50, the dataset's domain and everything the user
liked before as EXCLUDE; the target's place in the answer gives Recall@10, Recall@50 and
NDCG@10 exactly, and MRR cut at 50 (a target below 50 counts 0). The in-process row of the same
ONNX model, cut the same way, must agree. Dynamic int8 quantizes activations per tensor, so its
output depends on the batch a text was encoded in (≈1e-2 in cosine); the in-process side
therefore encodes as the server does: each user text alone, padded to the served tokenizer's
length bucket, and the catalog in deploy's batches. Then they must agree: identical metrics up to
one user per metric whose target sits on a float32 score tie at a rank boundary, i.e.
|Δ| ≤ 1/users.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError
from towerlite.evaluation.cases import Cases
from towerlite.evaluation.metrics import dot_scores, per_user, summarize, target_ranks, top_k
from towerlite.evaluation.towers import Tower
from towerlite.sequential import SavedTower, onnx_user_vectors

from .client import Client

K = 50


def _cut(above: np.ndarray, tied: np.ndarray) -> dict[str, np.ndarray]:
    values = per_user(np.minimum(above, K), tied * (above < K), ks=(10, 50), ndcg_k=10)
    values["mrr@50"] = np.where(above < K, values.pop("mrr"), 0.0)
    return values


def served_row(cases: Cases, url: str, protocol: str = "grpc") -> tuple[dict, list[list[str]]]:
    from tqdm.auto import tqdm

    above, tops = [], []
    with Client(url, protocol) as client:
        if not client.ready():
            raise TowerliteError(f"no ready Triton server at {url} ({protocol}); start one with "
                                 "`towerlite serve REPOSITORY`")
        for u in tqdm(range(len(cases.users)), desc=f"{cases.dataset} via Triton", unit="user"):
            rec = client.recommend(cases.user_texts[u], k=K, domain=cases.domain,
                                   exclude=[cases.item_ids[i] for i in cases.seen[u]])
            target = cases.item_ids[cases.targets[u]]
            above.append(rec.item_ids.index(target) if target in rec.item_ids else K)
            tops.append(rec.item_ids[:10])
    above = np.array(above)
    return summarize(_cut(above, np.zeros_like(above))), tops


def served_buckets(url: str, protocol: str) -> list[int]:
    """The length buckets the served tokenizer pads each request to (its BUCKETS parameter)."""
    with Client(url, protocol) as client:
        params = client.model_config("tokenizer").get("parameters", {})
    buckets = params.get("BUCKETS", {}).get("string_value", "")
    return sorted(int(b) for b in buckets.split(",") if b.strip())


def bucketed_users(tower: Tower, texts: list[str], buckets: list[int]) -> np.ndarray:
    """User embeddings as the server computes them: one request at a time, padded to its
    length bucket. Dynamic int8 quantizes activations per tensor, padding included, so this
    is what makes an int8 tower comparable; for fp32 it changes nothing beyond 1e-6."""
    enc = tower.model()
    out = []
    for tokens in enc.token_ids(texts):
        width = next((b for b in buckets if len(tokens) <= b), len(tokens))
        ids = np.full((1, width), enc.pad_id, dtype=np.int64)
        mask = np.zeros((1, width), dtype=np.int64)
        ids[0, :len(tokens)], mask[0, :len(tokens)] = tokens, 1
        out.append(enc.run(ids, mask)[0])
    return np.asarray(out, dtype=np.float32)


def in_process_cut(cases: Cases, tower: Tower, buckets: list[int]) -> tuple[dict, list[list[str]]]:
    from .catalog import embed_catalog

    users = bucketed_users(tower, cases.user_texts, buckets)
    # the catalog batched exactly as `towerlite deploy` embeds it, for the same reason
    items = embed_catalog(cases.item_texts, tower.model(), cache_dir=None, progress=False)
    scores = dot_scores(users, items)
    values = _cut(*target_ranks(scores, cases.targets, cases.seen))
    top = top_k(scores, len(cases.users), cases.seen, 10)
    return summarize(values), [[cases.item_ids[i] for i in row] for row in top]


def compare(cases: Cases, tower: Tower, url: str, protocol: str = "grpc") -> dict:
    served, served_top = served_row(cases, url, protocol)
    local, local_top = in_process_cut(cases, tower, served_buckets(url, protocol))
    names = ("recall@10", "recall@50", "ndcg@10", "mrr@50")
    diff = {m: round(abs(served[m] - local[m]), 6) for m in names}
    same_top = float(np.mean([a == b for a, b in zip(served_top, local_top)]))
    tolerance = 1.0 / len(cases.users)
    return {"url": url, "protocol": protocol, "compared_with": f"{tower.name} ({tower.runtime})",
            "served": served, "in_process": local, "abs_diff": diff,
            "same_top10_share": round(same_top, 4), "tolerance": round(tolerance, 6),
            "agree": all(d <= tolerance + 1e-9 for d in diff.values())}


def deployed_table(repository, item_ids: list[str]) -> np.ndarray:
    """The item table a deploy wrote (history_encoder's newest version), in `item_ids` order:
    the rows the server reads. Recomputing them from text would not do for an int8 item tower,
    whose embeddings depend on how the catalog was batched."""
    root = Path(repository) / "history_encoder"
    version = max(int(p.name) for p in root.iterdir() if p.name.isdigit())
    folder = root / str(version) / "history"
    ids = [i.decode() for i in np.load(folder / "item_ids.npy")]
    where = {item: r for r, item in enumerate(ids)}
    return np.load(folder / "item_table.npy")[[where[i] for i in item_ids]]


def served_agreement(cases: Cases, tower: SavedTower, text: np.ndarray | None, url: str,
                     protocol: str = "grpc", users: int = 100, model: str = "recommend_history",
                     table: np.ndarray | None = None) -> dict:
    """The served `recommend_history` against the in-process ranking of the same tower, for
    the first `users` cases: each user's history sent as ids, top-10 compared. `table`: the
    served item table in cases.item_ids order (`deployed_table`); else it is built from `text`.
    The served graph runs one user at a time and in-process runs a batch, so scores agree to
    float rounding (`max_abs_score_diff`) and a top-10 list can differ only where two scores
    (nearly) tie."""
    table = tower.item_table(cases.item_ids, text) if table is None else table
    n = min(users, len(cases.users))
    vectors = onnx_user_vectors(tower.session(), table, cases.seen[:n], tower.config.max_len)
    same, diff = 0, 0.0
    with Client(url, protocol) as client:
        for vector, seen in zip(vectors, cases.seen[:n]):
            got = client.recommend_history([cases.item_ids[r] for r in seen], k=10, model=model)
            scores = table @ vector
            scores[seen] = -np.inf
            best = np.argsort(-scores, kind="stable")[:10]
            same += got.item_ids == [cases.item_ids[r] for r in best]
            diff = max(diff, float(np.max(np.abs(np.asarray(got.scores) - scores[best]))))
    return {"url": url, "users": n, "same_top10_share": round(same / max(n, 1), 4),
            "max_abs_score_diff": diff, "agree": same / max(n, 1) >= 0.95 and diff < 1e-3}
