"""A thin client for the served two-tower model, over gRPC or HTTP (tritonclient).

    client = Client("127.0.0.1:8001")                       # gRPC; protocol="http" for HTTP
    recs = client.recommend(user_text, k=10, domain="book", exclude=history_ids)
    recs.item_ids, recs.scores, recs.domains                 # best first
    recs.release                                             # the release that answered
    Client(url, model="recommend_fused")                     # the same, one python model
    vectors = client.embed_items(["[movie] Heat (1995). Action|Crime|Thriller"])

Failures raise `ServingError` (a TowerliteError) with one line: the server's own message for a
rejected request, "cannot reach Triton at …" when nothing answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from towerlite.errors import TowerliteError


class ServingError(TowerliteError):
    """A request the server rejected, or a server that cannot be reached. `status`: the
    server's status for a rejected request ("StatusCode.INVALID_ARGUMENT" over gRPC, "400" over
    HTTP), None when there was no answer."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status

    @property
    def caller_error(self) -> bool:
        """The request's own mistake (gRPC INVALID_ARGUMENT, HTTP 4xx): retrying cannot help."""
        return self.status is not None and (self.status == "StatusCode.INVALID_ARGUMENT"
                                            or self.status.startswith("4"))


@dataclass
class Recommendations:
    item_ids: list[str]
    scores: np.ndarray
    domains: list[str]
    skipped: list[str] = field(default_factory=list)  # recommend_history: unknown history ids
    release: int | None = None  # the release that answered (towerlite release)

    def __len__(self) -> int:
        return len(self.item_ids)


def _strings(values: Sequence[str] | Sequence[bytes]) -> np.ndarray:
    return np.array([v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values],
                    dtype=np.object_)


def _release(result) -> int | None:
    value = result.as_numpy("RELEASE")
    return int(value.reshape(-1)[0]) if value is not None and value.size else None


def _decode(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(-1)]


class Client:
    """recommend / embed_items against a Triton server running the towerlite repository."""

    def __init__(self, url: str, protocol: str = "grpc", timeout_s: float = 30.0,
                 model: str = "recommend"):
        """`model`: the recommend ensemble, or `recommend_fused` (the same answers from one
        python model)."""
        if protocol not in ("grpc", "http"):
            raise ValueError("protocol is 'grpc' or 'http'")
        self.url, self.protocol, self.timeout_s = url, protocol, timeout_s
        self.model = model
        if protocol == "grpc":
            import tritonclient.grpc as tc
        else:
            import tritonclient.http as tc
        self._tc = tc
        kwargs = {} if protocol == "grpc" else {"connection_timeout": timeout_s,
                                                 "network_timeout": timeout_s}
        self._client = tc.InferenceServerClient(url, **kwargs)
        self._outputs: dict[str, set[str]] = {}  # model → its output names (_served_outputs)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------------------
    def _input(self, name: str, array: np.ndarray, dtype: str):
        tensor = self._tc.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        return tensor

    def _served_outputs(self, model: str, wanted: list[str]) -> list[str]:
        """`wanted` less the outputs `model` lacks (RELEASE, in a repository deployed before
        releases), asked of the server once per model."""
        if model not in self._outputs:
            try:
                meta = self._client.get_model_metadata(model)
                names = [o.name for o in meta.outputs] if self.protocol == "grpc" else \
                    [o["name"] for o in meta.get("outputs", [])]
            except Exception:  # noqa: BLE001  (the request itself will say what is wrong)
                return wanted
            self._outputs[model] = set(names)
        return [o for o in wanted if o in self._outputs[model]]

    def _call(self, model: str, inputs: list, outputs: list[str]):
        from tritonclient.utils import InferenceServerException

        wanted = [self._tc.InferRequestedOutput(o) for o in outputs]
        # the deadline goes to the server too (µs): a request still queued when it expires is
        # rejected there instead of run for a caller that has given up (the configs' queue policy)
        server_timeout_us = max(1, int(self.timeout_s * 1e6))
        try:
            if self.protocol == "grpc":
                result = self._client.infer(model, inputs, outputs=wanted,
                                            timeout=server_timeout_us,
                                            client_timeout=self.timeout_s)
            else:
                result = self._client.infer(model, inputs, outputs=wanted,
                                            timeout=server_timeout_us)
        except InferenceServerException as exc:
            message = self._explain(model, exc)
            reached = not message.startswith("cannot reach")
            raise ServingError(message, str(exc.status()) if reached and exc.status() else None) \
                from None
        except TimeoutError as exc:  # HTTP: the socket's timeout
            raise ServingError(self._explain(model, f"timed out ({exc})")) from None
        except (ConnectionError, OSError) as exc:
            raise ServingError(self._unreachable(exc)) from None
        return result

    def _unreachable(self, exc) -> str:
        first = (str(exc).splitlines() or [""])[0]
        return (f"cannot reach Triton at {self.protocol}://{self.url} ({first}); "
                "is the server running? (`towerlite serve --repository DIR`)")

    def _explain(self, model: str, exc) -> str:
        msg = (exc.message() if callable(getattr(exc, "message", None)) else str(exc)) or str(exc)
        msg = " ".join(str(msg).split())
        prefix = f"in ensemble '{model}', "
        msg = msg[len(prefix):] if msg.startswith(prefix) else msg
        low = msg.lower()
        # "Request timeout expired": the server's queue policy dropped it (gRPC UNAVAILABLE)
        if any(s in low for s in ("deadline exceeded", "timed out", "timeout expired")):
            # the server may be up and busy: not "cannot reach" (bench faults, deadline)
            return (f"{model}: no answer within the client's deadline of {self.timeout_s:g} s "
                    f"({msg}): the server is busy, or the deadline is shorter than the service "
                    "time")
        if any(s in low for s in ("unavailable", "connection refused", "failed to connect",
                                  "connect failed", "broken pipe", "name resolution",
                                  "socket closed")):
            return self._unreachable(msg)
        return f"{model}: {msg}"

    def model_config(self, model: str) -> dict:
        """The served model's configuration (the same dict over gRPC and HTTP)."""
        try:
            if self.protocol == "grpc":
                return self._client.get_model_config(model, as_json=True).get("config", {})
            return self._client.get_model_config(model)
        except Exception as exc:  # noqa: BLE001  (transport and server errors alike)
            raise ServingError(self._explain(model, exc)) from None

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready())
        except Exception:  # noqa: BLE001  (any transport failure means "not ready")
            return False

    # -- the two calls ----------------------------------------------------------------------
    def _options(self, k, domain, exclude, min_score) -> list:
        """The optional inputs both recommend models take (K, DOMAIN, EXCLUDE, MIN_SCORE)."""
        inputs = []
        if k is not None:
            inputs.append(self._input("K", np.array([[k]], dtype=np.int32), "INT32"))
        if domain:
            inputs.append(self._input("DOMAIN", _strings([domain]).reshape(1, 1), "BYTES"))
        if exclude is not None and len(exclude):
            inputs.append(self._input("EXCLUDE", _strings(list(exclude)).reshape(1, -1), "BYTES"))
        if min_score is not None:
            inputs.append(self._input("MIN_SCORE", np.array([[min_score]], dtype=np.float32),
                                      "FP32"))
        return inputs

    def recommend(self, user_text: str | bytes, k: int | None = 10, domain: str | None = None,
                  exclude: Sequence[str] | None = None,
                  min_score: float | None = None) -> Recommendations:
        """Top-k items for one user text, best first. `domain`: only that domain (or several,
        comma-separated); `exclude`: item ids to leave out (e.g. the history); `min_score`: only
        items scoring at least this (with k=None: up to the server's MAX_K of them)."""
        text = user_text if isinstance(user_text, bytes) else str(user_text).encode("utf-8")
        inputs = [self._input("TEXT", np.array([[text]], dtype=np.object_), "BYTES"),
                  *self._options(k, domain, exclude, min_score)]
        result = self._call(self.model, inputs, self._served_outputs(
            self.model, ["ITEM_IDS", "SCORES", "DOMAINS", "RELEASE"]))
        ids = _decode(result.as_numpy("ITEM_IDS")[0])
        scores = result.as_numpy("SCORES")[0]
        domains = _decode(result.as_numpy("DOMAINS")[0])
        keep = [i for i, v in enumerate(ids) if v]  # rows of a batch are padded with ""
        return Recommendations([ids[i] for i in keep], scores[keep], [domains[i] for i in keep],
                               release=_release(result))

    def recommend_history(self, history: Sequence[str], k: int | None = 10,
                          domain: str | None = None, exclude: Sequence[str] | None = None,
                          min_score: float | None = None,
                          model: str = "recommend_history") -> Recommendations:
        """Top-k items for a user's liked item ids (oldest → newest), best first, by the history
        tower; the history itself is left out. Ids the catalog does not know are skipped and
        come back in `.skipped`; a history with no known id is refused (ServingError)."""
        if isinstance(history, (str, bytes)):
            raise TypeError("recommend_history takes a list of item ids")
        inputs = [self._input("HISTORY", _strings(list(history)).reshape(1, -1), "BYTES"),
                  *self._options(k, domain, exclude, min_score)]
        result = self._call(model, inputs, self._served_outputs(
            model, ["ITEM_IDS", "SCORES", "DOMAINS", "SKIPPED", "RELEASE"]))
        ids = _decode(result.as_numpy("ITEM_IDS")[0])
        scores = result.as_numpy("SCORES")[0]
        domains = _decode(result.as_numpy("DOMAINS")[0])
        skipped_raw = result.as_numpy("SKIPPED")
        skipped = [s for s in _decode(skipped_raw.reshape(-1))] if skipped_raw is not None else []
        keep = [i for i, v in enumerate(ids) if v]
        return Recommendations([ids[i] for i in keep], scores[keep], [domains[i] for i in keep],
                               [s for s in skipped if s], _release(result))

    def embed_items(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32 item-tower embeddings of `texts`, in order."""
        if isinstance(texts, str):
            raise TypeError("embed_items takes a list of texts")
        parts = []
        for start in range(0, len(texts), batch_size):
            chunk = _strings(texts[start:start + batch_size]).reshape(-1, 1)
            result = self._call("embed_items", [self._input("TEXT", chunk, "BYTES")],
                                ["EMBEDDING"])
            parts.append(result.as_numpy("EMBEDDING"))
        if not parts:
            return np.zeros((0, 0), dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)
