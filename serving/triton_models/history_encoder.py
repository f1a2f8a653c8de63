"""Triton python model `history_encoder`: a user's liked item ids → the history tower's user
vector, the first step of the `recommend_history` ensemble (the second is `history_scorer`, the
scorer over the history tower's item table). No tokenizer and no text encoder at request time:
an item is its row of the item table (its text embedding through the tower's adapter, plus a
learned ID vector when it was warm in training), a small causal transformer (ONNX) reads the
newest MAX_LEN of them.

Runs inside Triton's python backend: imports only numpy, onnxruntime and
triton_python_backend_utils. Files in the version folder, written by `towerlite deploy`:

    history/history_encoder.onnx   item_vectors (B, L, dim), mask (B, L) → user_vector (B, dim)
    history/item_table.npy         float32 (n, dim), the catalog's rows in the scorer's order
    history/item_ids.npy           the catalog's ids as UTF-8 bytes (n,), sorted within a domain
    history/history.json           count, dim, max_len, domain ranges [start, stop)

Inputs: HISTORY bytes [-1] (item ids, oldest → newest; "" entries are ignored), optional
EXCLUDE bytes [-1]. Outputs: EMBEDDING float32 [dim]; EXCLUDE_ALL bytes [-1] (the known
history ids and EXCLUDE, for the scorer to leave out); SKIPPED bytes [-1] (history ids not in
the catalog: skipped, reported, never an error). A history with no known item is the caller's
error (INVALID_ARGUMENT), as is one longer than MAX_HISTORY ids.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def caller_error(message):
    """The request's own mistake: INVALID_ARGUMENT over gRPC, 400 over HTTP, also through an
    ensemble (a bare TritonError is INTERNAL / 500: a server fault to retry, to page about)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # absent before Triton 2.39
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class RequestError(ValueError):
    pass


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"], "history")
        for name in ("history.json", "history_encoder.onnx", "item_table.npy", "item_ids.npy"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise FileNotFoundError(f"{os.path.join(folder, name)} is missing "
                                        "(towerlite deploy --history-model writes it)")
        with open(os.path.join(folder, "history.json")) as f:
            self.meta = json.load(f)
        # mapped, one copy in the page cache for every instance; np.asarray drops the
        # np.memmap subclass, whose every slice and comparison went through its python hooks
        # (the id lookup of a 25-item history: 24 → 18 µs, measured)
        self.table = np.asarray(np.load(os.path.join(folder, "item_table.npy"), mmap_mode="r"))
        self.ids = np.asarray(np.load(os.path.join(folder, "item_ids.npy"), mmap_mode="r"))
        self.ranges = [(d["start"], d["stop"]) for d in self.meta["domains"]]
        self.max_len = int(params.get("MAX_LEN", self.meta["max_len"]))
        self.max_history = int(params.get("MAX_HISTORY", "10000"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(folder, "history_encoder.onnx"), options,
                                            providers=["CPUExecutionProvider"])

    def _rows_of(self, keys):
        """Catalog rows of item ids (non-empty bytes), -1 where unknown: one vectorized
        searchsorted per domain range (ids are sorted within each; a python loop per id cost
        17 µs an id, measured)."""
        width = self.ids.dtype.itemsize  # a longer key is in no catalog (numpy would cut it)
        wanted = np.array([k if len(k) <= width else b"" for k in keys], dtype=self.ids.dtype)
        rows = np.full(len(keys), -1, dtype=np.int64)
        for start, stop in self.ranges:
            part = self.ids[start:stop]
            if len(part) and len(keys):
                pos = np.minimum(np.searchsorted(part, wanted), len(part) - 1)
                hit = (rows < 0) & (part[pos] == wanted) & (wanted != b"")
                rows[hit] = start + pos[hit]
        return rows

    def _rows(self, request):
        history = pb_utils.get_input_tensor_by_name(request, "HISTORY").as_numpy().reshape(-1)
        if history.size > self.max_history:
            raise RequestError(f"HISTORY has {history.size:,} ids; at most {self.max_history:,} "
                               "(MAX_HISTORY)")
        keys = [v if isinstance(v, bytes) else str(v).encode() for v in history]
        keys = [k for k in keys if k]
        rows = self._rows_of(keys).tolist()
        skipped = [k for k, r in zip(keys, rows) if r < 0]
        known = [(k, r) for k, r in zip(keys, rows) if r >= 0]
        if not known:
            raise RequestError("the history has no item of this catalog" + (
                f" ({len(skipped)} unknown id(s), e.g. {skipped[0].decode('utf-8', 'replace')!r})"
                if skipped else " (it is empty)") + ": send at least one liked item id, or use "
                "`recommend` with a user text")
        extra = pb_utils.get_input_tensor_by_name(request, "EXCLUDE")
        extra = [] if extra is None else [
            v if isinstance(v, bytes) else str(v).encode() for v in extra.as_numpy().reshape(-1)]
        extra = [v for v in extra if v]
        rows = self._rows_of(extra)
        unknown = [v.decode("utf-8", "replace") for v, r in zip(extra, rows) if r < 0]
        if unknown:
            raise RequestError(f"{len(unknown)} EXCLUDE id(s) not in the catalog: "
                               + ", ".join(map(repr, unknown[:5])))
        return known, skipped, extra

    def execute(self, requests):
        parsed = []
        for request in requests:
            try:
                parsed.append(self._rows(request))
            except RequestError as exc:
                parsed.append(exc)
        good = [p for p in parsed if not isinstance(p, RequestError)]
        vectors = iter(self._encode([[r for _, r in p[0]] for p in good]) if good else [])
        responses = []
        for request, p in zip(requests, parsed):
            if isinstance(p, RequestError):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=caller_error(f"history_encoder: {p}")))
                continue
            known, skipped, _ = p
            exclude = list(dict.fromkeys([k for k, _ in known] + p[2]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("EMBEDDING", next(vectors)[None, :]),
                pb_utils.Tensor("EXCLUDE_ALL", np.array([exclude], dtype=object)),
                pb_utils.Tensor("SKIPPED", np.array([skipped], dtype=object).reshape(1, -1)),
            ]))
        return responses

    def _encode(self, histories):
        """User vectors of several histories (catalog rows) in one onnxruntime call."""
        width = min(self.max_len, max(len(h) for h in histories))
        rows = np.full((len(histories), width), -1, np.int64)
        for r, h in enumerate(histories):
            h = h[-width:]
            rows[r, width - len(h):] = h
        mask = (rows >= 0).astype(np.float32)
        vectors = self.table[np.maximum(rows, 0).reshape(-1)].reshape(
            len(histories), width, -1) * mask[..., None]
        return self.session.run(None, {"item_vectors": vectors.astype(np.float32),
                                       "mask": mask})[0]
