"""Triton control: load a written scorer version on a running server through the repository
API (load_model, and a reload of the fused models), and check the server now serves it."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from towerlite.errors import TowerliteError

from .. import history_update as history
from ..repository import FUSED, HISTORY_FUSED

EXCLUDE_CHUNK = 1000     # ids per check request
LOAD_TIMEOUT_S = 600.0   # a large catalog with an IVF index loads in tens of seconds


class LoadError(TowerliteError):
    """The version is written but the server did not (yet) load it. `next_step`: retry (the
    server could not be reached), restart (it does not allow loading), rejected (it tried and
    failed: it keeps serving the previous version), elsewhere (it serves another repository),
    log (something else: the server's log says)."""

    def __init__(self, message: str, next_step: str = "rejected"):
        super().__init__(message)
        self.next_step = next_step


def _unreachable(message: str) -> bool:
    low = message.lower()
    return any(s in low for s in ("failed to connect", "connection refused", "deadline exceeded",
                                  "name resolution", "socket closed", "broken pipe",
                                  "connect failed", "errno 111"))


def _server_client(url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc

        return tc.InferenceServerClient(url)
    if protocol == "http":
        import tritonclient.http as tc

        return tc.InferenceServerClient(url, connection_timeout=30.0,
                                        network_timeout=LOAD_TIMEOUT_S)
    raise TowerliteError(f"unknown protocol {protocol!r}; choose grpc or http")


def _load_error(url: str, protocol: str, exc: BaseException) -> LoadError:
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    message = " ".join(str(message or exc).split())
    if _unreachable(message):
        return LoadError(f"cannot reach Triton at {protocol}://{url} ({message}); is the server "
                         "running?", "retry")
    if "explicit model load / unload is not allowed" in message:
        return LoadError(f"the server at {url} does not allow loading models (it was started "
                         "without --model-control-mode=explicit; `towerlite serve` starts it "
                         "with, unless --model-control none)", "restart")
    return LoadError(f"the server tried and refused it, and keeps serving the previous version: "
                     f"{message}", "rejected")


def load_on_server(url: str, protocol: str, version: int, present: Sequence[str] = (),
                   absent: Sequence[str] = ()) -> dict:
    """load_model("scorer") and check the server now serves `version`: it is ready, the ensemble
    is ready, `present` ids are in its catalog and `absent` ids are not. Raises LoadError."""
    from tritonclient.utils import InferenceServerException

    client = _server_client(url, protocol)
    t0 = time.perf_counter()
    try:
        _load_model(client, protocol, "scorer")
        ready = client.is_model_ready("scorer", str(version))
        served = client.get_model_metadata("scorer")
        served = served.versions if protocol == "grpc" else served.get("versions", [])
        ensemble = client.is_model_ready("recommend")
        # recommend_fused reads the scorer's newest catalog when it loads: reload it too (Triton
        # keeps the loaded one answering until the reloaded one is ready)
        repo_models = {m["name"] if isinstance(m, dict) else m.name
                       for m in _repository_index(client, protocol)}
        fused = FUSED in repo_models
        if fused:
            _reload_fused(client, protocol, FUSED, "SCORER_VERSION", version)
            ensemble = ensemble and client.is_model_ready(FUSED)
        if set(history.MODELS) <= repo_models:
            ensemble = ensemble and history.load(client, protocol, _load_model, version)
            if HISTORY_FUSED in repo_models:
                _reload_fused(client, protocol, HISTORY_FUSED, "HISTORY_VERSION", version)
                ensemble = ensemble and client.is_model_ready(HISTORY_FUSED)
        load_s = time.perf_counter() - t0
    except (InferenceServerException, OSError) as exc:
        raise _load_error(url, protocol, exc) from None
    finally:
        client.close()
    if not ready:
        raise LoadError(f"the server at {url} loaded the scorer but serves version(s) "
                        f"{', '.join(served) or 'none'}, not {version}", "elsewhere")
    if not ensemble:
        raise LoadError(f"the server at {url} serves scorer version {version} but "
                        f"`recommend`{' or ' + FUSED if fused else ''} is not ready", "log")
    for model in ("recommend", FUSED) if fused else ("recommend",):
        _check_catalog(url, protocol, present, absent, model)
    return {"url": url, "protocol": protocol, "load_seconds": round(load_s, 2),
            "served_versions": [str(v) for v in served], "checked_present": len(present),
            "checked_absent": len(absent)}


def _reload_fused(client, protocol: str, name: str, parameter: str, version: int) -> None:
    """Reload a fused model (fused.py) at catalog `version`: it reads its steps' newest version
    when it loads, and its own files are unchanged, so Triton reloads it only for a changed
    config: the parameter naming the version. The loaded one answers until the new one is ready."""
    config = client.get_model_config(name, **({"as_json": True} if protocol == "grpc" else {}))
    config = config.get("config", config)
    config.setdefault("parameters", {})[parameter] = {"string_value": str(version)}
    _load_model(client, protocol, name, json.dumps(config))


def _load_model(client, protocol: str, name: str, config: str | None = None) -> None:
    if protocol == "grpc":
        client.load_model(name, config=config, client_timeout=LOAD_TIMEOUT_S)
    else:
        client.load_model(name, config=config)


def _repository_index(client, protocol: str) -> list:
    index = client.get_model_repository_index()
    return list(index.models) if protocol == "grpc" else index


def _check_catalog(url: str, protocol: str, present: Sequence[str], absent: Sequence[str],
                   model: str = "recommend"):
    """The scorer refuses EXCLUDE ids it does not hold, naming how many: so `present` must be
    accepted and `absent` refused in full, by the catalog now served."""
    from ..client import Client, ServingError

    with Client(url, protocol, timeout_s=60, model=model) as client:
        try:
            for start in range(0, len(present), EXCLUDE_CHUNK):
                client.recommend("catalog check", k=1,
                                 exclude=list(present[start:start + EXCLUDE_CHUNK]))
        except ServingError as exc:
            raise LoadError(f"the served catalog lacks items this update added: {exc}",
                            "elsewhere") from None
        for start in range(0, len(absent), EXCLUDE_CHUNK):
            chunk = list(absent[start:start + EXCLUDE_CHUNK])
            try:
                client.recommend("catalog check", k=1, exclude=chunk)
                refused = ""
            except ServingError as exc:
                refused = str(exc)
            if f"{len(chunk)} EXCLUDE id(s) not in the catalog" not in refused:
                raise LoadError("the served catalog still holds items this update removed"
                                + (f" ({refused})" if refused else ""), "elsewhere")
