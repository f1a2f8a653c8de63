"""The requests a benchmark sends: real user texts of held-out users, as real traffic looks.

Each text is one held-out user's (`towerlite.data.splits.is_heldout_user`: never trained on)
most recent liked items rendered by `towerlite.data.render.user_text`, the rendering every
stage uses. How many of their items a text holds is drawn per user from 1…max_history, so the
lengths vary as they do for real users (a new user has one item, a regular ten) and requests
fall into every length bucket of the tokenizer. Users and lengths are drawn from a seed: the
same settings give the same texts, and the fingerprint (a hash of the texts, K and the domain
filter) says whether two reports measured the same requests.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

import numpy as np

from towerlite.errors import TowerliteError

DATASET_DOMAIN = {"movielens": "movie", "bookcrossing": "book"}


@dataclass
class RequestSet:
    """The request texts and the per-request options every request carries."""

    texts: list  # user texts, or (kind "history") lists of liked item ids, oldest → newest
    k: int = 10
    domain: str | None = None
    sources: list[str] = field(default_factory=list)  # dataset of each text
    items_per_text: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)  # how the texts were drawn
    kind: str = "text"  # "text": TEXT inputs (recommend); "history": HISTORY (recommend_history)

    @property
    def fingerprint(self) -> str:
        """What `bench compare` checks: equal only for the same texts, K and domain filter."""
        blob = json.dumps({"texts": self.texts, "k": self.k, "domain": self.domain}
                          | ({"kind": self.kind} if self.kind != "text" else {}),
                          ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> dict:
        chars = np.array([len(t) for t in self.texts])
        per = {name: self.sources.count(name) for name in dict.fromkeys(self.sources)}
        if self.kind == "history":
            return {"fingerprint": self.fingerprint, "kind": self.kind, "count": len(self.texts),
                    "k": self.k, "domain": self.domain, "datasets": per, **self.settings,
                    "ids_per_history": _spread(np.array([len(t) for t in self.texts]))}
        out = {"fingerprint": self.fingerprint, "count": len(self.texts), "k": self.k,
               "domain": self.domain, "datasets": per, **self.settings,
               "chars": _spread(chars)}
        if self.items_per_text:
            out["items_per_text"] = _spread(np.array(self.items_per_text))
        out["examples"] = [t if len(t) <= 160 else t[:157] + "…" for t in self.texts[:3]]
        return out


def _spread(values: np.ndarray) -> dict:
    return {"min": int(values.min()), "p50": float(np.median(values)), "max": int(values.max())}


def held_out_texts(dataset: str, count: int, seed: int = 0, max_history: int = 10,
                   ) -> list[tuple[str, int]]:
    """(text, items in it) for `count` held-out users of `dataset` (fewer if it has fewer)."""
    from towerlite.data import load_dataset, user_text
    from towerlite.data.splits import is_heldout_user, ordered_likes

    data = load_dataset(dataset)
    likes = ordered_likes(data, seed)
    users = sorted(u for u, items in likes.items() if items and is_heldout_user(u))
    rng = random.Random(f"bench:{dataset}:{seed}")
    users = rng.sample(users, min(count, len(users)))
    by_id = data.items.drop_duplicates("item_id").set_index("item_id", drop=False)
    out = []
    for user in users:
        n = rng.randint(1, max_history)  # varied lengths: 1…max_history items
        history = likes[user][-n:]
        out.append((user_text(by_id.loc[history].to_dict("records"), max_items=n), len(history)))
    return out


def held_out_histories(dataset: str, count: int, seed: int = 0, max_history: int = 50,
                       ) -> list[tuple[list[str], int]]:
    """(liked item ids, how many) for `count` held-out users: the newest 1…max_history of
    their likes, the length drawn per user as for the texts."""
    from towerlite.data import load_dataset
    from towerlite.data.splits import is_heldout_user, ordered_likes

    likes = ordered_likes(load_dataset(dataset), seed)
    users = sorted(u for u, items in likes.items() if items and is_heldout_user(u))
    rng = random.Random(f"bench:{dataset}:{seed}")
    users = rng.sample(users, min(count, len(users)))
    out = []
    for user in users:
        history = likes[user][-rng.randint(1, max_history):]
        out.append((history, len(history)))
    return out


def build_requests(datasets: list[str], count: int = 1000, seed: int = 0, k: int = 10,
                   domain: str | None = None, max_history: int = 10,
                   kind: str = "text") -> RequestSet:
    """`count` texts (or, kind "history", id lists) shared evenly by `datasets`, interleaved
    so every stretch of the run (and every concurrency level) sees the same mix."""
    if count < 1 or max_history < 1 or k < 1:
        raise TowerliteError("--texts, --max-history and --k must be at least 1")
    unknown = [d for d in datasets if d not in DATASET_DOMAIN]
    if unknown or not datasets:
        raise TowerliteError(f"unknown dataset(s) {unknown}; known: {', '.join(DATASET_DOMAIN)}")
    shares = [count // len(datasets) + (i < count % len(datasets)) for i in range(len(datasets))]
    draw = held_out_histories if kind == "history" else held_out_texts
    per = {d: draw(d, n, seed, max_history) for d, n in zip(datasets, shares)}
    texts, sources, sizes = [], [], []
    for i in range(max(len(v) for v in per.values())):
        for d in datasets:
            if i < len(per[d]):
                texts.append(per[d][i][0])
                sizes.append(per[d][i][1])
                sources.append(d)
    return RequestSet(texts, k=k, domain=domain, sources=sources, items_per_text=sizes,
                      settings={"users": "held-out (is_heldout_user)", "seed": seed,
                                "max_history": max_history}, kind=kind)


def perf_analyzer_data(requests: RequestSet) -> dict:
    """perf_analyzer's --input-data JSON: one entry per request, shapes without the batch
    dimension (the model batches, perf_analyzer sends batch 1)."""
    rows = []
    for text in requests.texts:
        first = {"HISTORY": {"content": list(text), "shape": [len(text)]}} \
            if requests.kind == "history" else {"TEXT": {"content": [text], "shape": [1]}}
        row = {**first, "K": {"content": [requests.k], "shape": [1]}}
        if requests.domain:
            row["DOMAIN"] = {"content": [requests.domain], "shape": [1]}
        rows.append(row)
    return {"data": rows}
