"""What each release should answer, computed offline from its own files (onnxruntime, numpy):
the check that catches a mixed answer. An answer tagged RELEASE R must carry the top-k scores
that release R's user tower gives against release R's catalog; a user vector of one release
scored against another's catalog gives other scores (tests/test_release.py checks the check).

    ref = ReleaseReference(repo)
    ref.matches(answer.release, request, answer.scores)   # request: a user text or a history

Exact search only (a repository whose catalog has an IVF index is re-scored exactly here, so
approximate answers may differ in their tail: compare with a larger `atol` or the top score).
fp32 towers only: a dynamic-int8 encoder's output depends on the batch Triton ran it in (its
quantization scale comes from the whole padded batch: max element difference 0.012, cosine
0.9969 on the 3-layer student, 3e-8 in fp32), so an int8 answer cannot be recomputed offline.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import catalog as cat

ATOL = 1e-4  # served fp32 against offline fp32 (int8: ~1e-6 only for a request batched alone)


def served_max_length(repo: Path) -> int:
    """The tokenizer model's MAX_LENGTH: user texts are cut there when served (the 3-layer
    student serves 64 tokens; reading 128 here made every long text a false "mixed" answer)."""
    config = (Path(repo) / "tokenizer" / "config.pbtxt").read_text()
    found = re.search(r'key:\s*"MAX_LENGTH"\s*value:\s*{\s*string_value:\s*"(\d+)"', config)
    return int(found.group(1)) if found else 128  # the tokenizer model's own default


class ReleaseReference:
    def __init__(self, repo: Path, max_length: int | None = None):
        self.repo = Path(repo)
        self.max_length = max_length or served_max_length(self.repo)
        self._encoders: dict = {}
        self._catalogs: dict = {}
        self._cache: dict = {}

    def user_vector(self, release: int, text: str) -> np.ndarray:
        from towerlite.runtime import OnnxEncoder

        if release not in self._encoders:
            tokenizer = self.repo / "tokenizer" / str(release) / "tokenizer.json"
            self._encoders[release] = OnnxEncoder(
                self.repo / "user_encoder" / str(release) / "model.onnx", tokenizer,
                max_length=self.max_length)
        return self._encoders[release].encode([text])[0]

    def _history(self, release: int):
        from towerlite.sequential import SavedTower

        key = ("history", release)
        if key not in self._encoders:
            folder = self.repo / "history_encoder" / str(release) / "history"
            ids = [i.decode() for i in np.load(folder / "item_ids.npy")]
            self._encoders[key] = (SavedTower.load(folder), np.load(folder / "item_table.npy"),
                                   {item: row for row, item in enumerate(ids)})
        return self._encoders[key]

    def catalog(self, model: str, release: int) -> tuple[np.ndarray, dict]:
        if (model, release) not in self._catalogs:
            emb, ids, _ = cat.read_catalog(self.repo / model / str(release) / "catalog")
            self._catalogs[(model, release)] = (np.asarray(emb),
                                                {item: r for r, item in enumerate(ids)})
        return self._catalogs[(model, release)]

    def scores(self, release: int, request: str | list[str], k: int = 10) -> np.ndarray:
        """The top-k scores release `release` answers `request` with (a history's own items
        left out, as the served models leave them out)."""
        key = (release, request if isinstance(request, str) else tuple(request), k)
        if key in self._cache:
            return self._cache[key]
        if isinstance(request, str):
            user = self.user_vector(release, request)
            emb, _ = self.catalog("scorer", release)
            scores = emb @ user
        else:
            from towerlite.sequential import onnx_user_vectors

            tower, table, rows = self._history(release)
            known = [rows[i] for i in request if i in rows]
            user = onnx_user_vectors(tower.session(), table, [known], tower.config.max_len)[0]
            emb, where = self.catalog("history_scorer", release)
            scores = emb @ user
            scores[[where[i] for i in request if i in where]] = -np.inf
        top = np.sort(scores)[::-1][:k]
        self._cache[key] = top
        return top

    def matches(self, release: int | None, request: str | list[str], served: np.ndarray,
                atol: float = ATOL) -> bool:
        """Whether `served` (an answer's scores, best first) are release `release`'s."""
        if release is None or not (self.repo / "scorer" / str(release)).is_dir():
            return False
        want = self.scores(release, request, len(served))
        return len(want) == len(served) and bool(np.allclose(served, want, atol=atol))
