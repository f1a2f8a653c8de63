"""What the benchmark learns from the server before it sends load: that it answers (one clear
line when it does not), that the model is ready, which models the ensemble composes (their
statistics are the server-side split), and which catalog domains it serves (so the request
texts come from the datasets the catalog holds)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from towerlite.errors import TowerliteError

_SCHEME = re.compile(r"^(grpc|https?)://")


def host_port(url: str) -> str:
    """HOST:PORT from what a user may paste (a scheme or a trailing slash are dropped)."""
    plain = _SCHEME.sub("", url.strip()).rstrip("/")
    host, _, port = plain.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TowerliteError(f"--url {url!r} is not HOST:PORT (e.g. 127.0.0.1:8001 for gRPC, "
                             ":8000 for HTTP)")
    return plain


def client_module(protocol: str, aio: bool = False):
    if protocol == "grpc":
        import tritonclient.grpc as sync
        import tritonclient.grpc.aio as asyncio_
    elif protocol == "http":
        import tritonclient.http as sync
        import tritonclient.http.aio as asyncio_
    else:
        raise TowerliteError(f"--protocol is grpc or http, not {protocol!r}")
    return asyncio_ if aio else sync


def one_line(exc: BaseException, model: str = "") -> str:
    """The server's message on one line, without the ensemble's prefix."""
    msg = exc.message() if callable(getattr(exc, "message", None)) else None
    msg = " ".join(str(msg or exc or type(exc).__name__).split())
    prefix = f"in ensemble '{model}', "
    return msg[len(prefix):] if model and msg.startswith(prefix) else msg


def unreachable(url: str, protocol: str, why: str) -> str:
    return (f"cannot reach Triton at {protocol}://{url} ({why}); is the server running? "
            "(`towerlite serve --repository DIR` prints its endpoints)")


def infer_inputs(tc, text: str | list[str], k: int | None, domain: str | None) -> list:
    """The inputs of one request (TEXT, K, DOMAIN; HISTORY instead of TEXT when `text` is a
    list of item ids) for a tritonclient module."""
    def tensor(name, array, dtype):
        t = tc.InferInput(name, list(array.shape), dtype)
        t.set_data_from_numpy(array)
        return t

    if isinstance(text, list):
        inputs = [tensor("HISTORY", np.array([[i.encode("utf-8") for i in text]],
                                             dtype=np.object_), "BYTES")]
    else:
        inputs = [tensor("TEXT", np.array([[text.encode("utf-8")]], dtype=np.object_), "BYTES")]
    if k is not None:
        inputs.append(tensor("K", np.array([[k]], dtype=np.int32), "INT32"))
    if domain:
        inputs.append(tensor("DOMAIN", np.array([[domain.encode("utf-8")]], dtype=np.object_),
                             "BYTES"))
    return inputs


@dataclass
class ServerInfo:
    url: str
    protocol: str
    model: str
    server_id: str
    server_version: str
    composing: list[str]  # the ensemble's steps (or the model itself)
    inputs: list[str]
    domains: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"url": self.url, "protocol": self.protocol, "model": self.model,
                "id": self.server_id, "version": self.server_version,
                "composing_models": self.composing, "domains": self.domains}


def sync_client(url: str, protocol: str, timeout: float):
    tc = client_module(protocol)
    if protocol == "http":
        return tc.InferenceServerClient(url, connection_timeout=timeout, network_timeout=timeout)
    return tc.InferenceServerClient(url)


def _call(client, protocol: str, method: str, *args, timeout: float, **kw):
    if protocol == "grpc":
        kw["client_timeout"] = timeout
    return getattr(client, method)(*args, **kw)


def model_config(client, protocol: str, model: str, timeout: float) -> dict:
    if protocol == "grpc":
        return client.get_model_config(model, as_json=True, client_timeout=timeout)["config"]
    return client.get_model_config(model)


def probe(url: str, protocol: str, model: str, timeout: float = 10.0) -> ServerInfo:
    """Check the server and model; TowerliteError with one line when they are not there."""
    url = host_port(url)
    client = sync_client(url, protocol, timeout)
    try:
        try:
            live = _call(client, protocol, "is_server_live", timeout=timeout)
            meta = (client.get_server_metadata(as_json=True, client_timeout=timeout)
                    if protocol == "grpc" else client.get_server_metadata())
        except Exception as exc:  # noqa: BLE001  (refused, DNS, timeout: all mean "not there")
            raise TowerliteError(unreachable(url, protocol, one_line(exc).split(";")[0])) from None
        if not live:
            raise TowerliteError(unreachable(url, protocol, "the server is not live"))
        if not _call(client, protocol, "is_model_ready", model, timeout=timeout):
            raise TowerliteError(f"model {model!r} is not ready on {protocol}://{url}; ready: "
                                 f"{', '.join(_ready_models(client, protocol, timeout)) or 'none'}")
        config = model_config(client, protocol, model, timeout)
        meta = meta if isinstance(meta, dict) else {}
        steps = config.get("ensemble_scheduling", {}).get("step", [])
        info = ServerInfo(url, protocol, model, meta.get("name", ""), meta.get("version", ""),
                          [s["model_name"] for s in steps] or [model],
                          [i["name"] for i in config.get("input", [])])
        if "DOMAIN" in info.inputs and "TEXT" in info.inputs:  # a history model: no probe text
            info.domains = [d for d in ("movie", "book")
                            if _serves_domain(client, protocol, model, d, timeout)]
        return info
    finally:
        client.close()


def _ready_models(client, protocol: str, timeout: float) -> list[str]:
    try:
        if protocol == "grpc":
            index = client.get_model_repository_index(as_json=True, client_timeout=timeout)
            index = index.get("models", [])
        else:
            index = client.get_model_repository_index()
    except Exception:  # noqa: BLE001  (only used to make the message more helpful)
        return []
    return sorted({m["name"] for m in index if m.get("state") == "READY"})


def _serves_domain(client, protocol: str, model: str, domain: str, timeout: float) -> bool:
    """One request filtered to `domain`: answered → the catalog has it; "unknown domain" → not."""
    tc = client_module(protocol)
    try:
        _call(client, protocol, "infer", model, infer_inputs(tc, "[movie] probe", 1, domain),
              timeout=timeout)
        return True
    except Exception as exc:  # noqa: BLE001
        msg = one_line(exc, model)
        if "unknown domain" in msg:
            return False
        raise TowerliteError(f"{model}: a probe request failed: {msg}") from None
