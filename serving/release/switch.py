"""Switching a running Triton server from one release to another through its repository API,
so that no request is answered by parts of two releases:

1. both: every versioned model's policy names the old release and the new one, and is loaded
   (Triton loads the new versions while the old ones keep answering; a model whose new version
   fails to load keeps its old one: the policies go back and the switch is refused);
2. switch: each ensemble's steps and each fused model's RELEASE name the new release, and it is
   reloaded; Triton swaps a reloaded model when the new one is ready, and a request already
   inside an ensemble finishes on the steps it started with (they stay loaded: step 1);
3. old out: the policies name the new release only and the models are reloaded; Triton unloads
   a version after its requests in flight have finished.

Every config is rewritten on disk first and loaded from there (`load_model` without a config),
so a server restarted at any point serves one release: the ensembles name exactly one. Measured
on the tests' 300-item portable repository at concurrency 8: 0 failed requests during a switch;
every config change reloads all of a model's loaded versions, so step 3 loads the new release a
second time (seconds for a small catalog; a memory-mapped catalog shares its page cache).
"""

from __future__ import annotations

import time
from pathlib import Path

from towerlite.errors import TowerliteError

from . import pin
from .store import ENSEMBLES, FUSED_MODELS, VERSIONED, point, point_disk, present

__all__ = ["LoadError", "switch"]

LOAD_TIMEOUT_S = 600.0   # a large catalog with an IVF index loads in tens of seconds


class LoadError(TowerliteError):
    """The release is written but the server did not (yet) serve it. `next_step`: retry (the
    server could not be reached), restart (it does not allow loading), rejected (it tried and
    failed: it keeps serving the previous release), elsewhere (it serves another repository),
    log (something else: the server's log says)."""

    def __init__(self, message: str, next_step: str = "rejected"):
        super().__init__(message)
        self.next_step = next_step


def _unreachable(message: str) -> bool:
    low = message.lower()
    return any(s in low for s in ("failed to connect", "connection refused", "deadline exceeded",
                                  "name resolution", "socket closed", "broken pipe",
                                  "connect failed", "errno 111"))


def server_client(url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc

        return tc.InferenceServerClient(url)
    if protocol == "http":
        import tritonclient.http as tc

        return tc.InferenceServerClient(url, connection_timeout=30.0,
                                        network_timeout=LOAD_TIMEOUT_S)
    raise TowerliteError(f"unknown protocol {protocol!r}; choose grpc or http")


def load_error(url: str, protocol: str, exc: BaseException) -> LoadError:
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    message = " ".join(str(message or exc).split())
    if _unreachable(message):
        return LoadError(f"cannot reach Triton at {protocol}://{url} ({message}); is the server "
                         "running?", "retry")
    if "explicit model load / unload is not allowed" in message:
        return LoadError(f"the server at {url} does not allow loading models (it was started "
                         "without --model-control-mode=explicit; `towerlite serve` starts it "
                         "with, unless --model-control none)", "restart")
    return LoadError(f"the server tried and refused it, and keeps serving the previous release: "
                     f"{message}", "rejected")


def load_model(client, protocol: str, name: str) -> None:
    if protocol == "grpc":
        client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
    else:
        client.load_model(name)


def _served(client, protocol: str) -> set[str]:
    index = client.get_model_repository_index()
    models = list(index.models) if protocol == "grpc" else index
    return {m["name"] if isinstance(m, dict) else m.name for m in models}


def _config(client, protocol: str, name: str) -> dict:
    config = client.get_model_config(name, **({"as_json": True} if protocol == "grpc" else {}))
    return config.get("config", config)


def _named(config: dict) -> set[int]:
    """The releases a served ensemble's steps or a fused model's RELEASE name (-1: newest)."""
    steps = config.get("ensemble_scheduling", config.get("ensembleScheduling", {})).get("step")
    if steps:
        return {int(s.get("model_version", s.get("modelVersion", -1))) for s in steps}
    value = config.get("parameters", {}).get("RELEASE", {})
    value = value.get("string_value", value.get("stringValue"))
    return {int(value)} if value else set()


def served_release(client, protocol: str) -> int | None:
    """The release the server's `recommend` names (None: a server of a repository written
    before releases, whose ensembles take each model's newest version)."""
    found = _named(_config(client, protocol, "recommend"))
    return max(found) if found and max(found) >= 0 else None


def _in_use(client, protocol: str, names: list[str]) -> set[int]:
    """Every release a served ensemble or fused model names (after a switch cut short, they
    may differ): all stay loaded until each names the new one."""
    return {v for name in names for v in _named(_config(client, protocol, name)) if v >= 0}


def switch(repo: Path, url: str, protocol: str, new: int) -> dict:
    """Make the server at `url` serve release `new` of `repo`, whichever it serves now (a
    rollback too: `new` older than that). Raises LoadError; on a refused release the server
    keeps serving the one it had, and the configs on disk name that one again."""
    from tritonclient.utils import InferenceServerException

    versioned = present(repo, VERSIONED)
    client = server_client(url, protocol)
    t0 = time.perf_counter()
    steps = {}
    stage, old = "connect", None
    try:
        served = _served(client, protocol)
        old = served_release(client, protocol)
        pointing = [n for n in present(repo, (*ENSEMBLES, *FUSED_MODELS)) if n in served]
        stage = "both"
        try:
            if old is None:  # a server of a repository deployed before releases: its
                # ensembles take each model's newest version and would follow step 1's new
                # versions one model at a time. First it serves release `old` (store.adopt:
                # the folders it serves, hard-linked under that number), pinned
                ready = [int(v) for v in _versions_ready(client, protocol, "scorer")]
                old = max(ready) if ready else new
                for model in versioned:
                    pin.set_versions(repo / model / "config.pbtxt", (old,))
                    load_model(client, protocol, model)
                for name in point(repo, old):
                    if name in served:
                        load_model(client, protocol, name)
            both = _in_use(client, protocol, pointing) | {old, new}
            for model in versioned:
                pin.set_versions(repo / model / "config.pbtxt", sorted(both))
                load_model(client, protocol, model)
            steps["both_loaded_s"] = round(time.perf_counter() - t0, 2)
            stage = "switch"
            for name in point(repo, new):
                if name in served:
                    load_model(client, protocol, name)
            steps["switched_s"] = round(time.perf_counter() - t0, 2)
        except InferenceServerException as exc:
            error = load_error(url, protocol, exc)
            if error.next_step == "rejected":
                _restore(repo, client, protocol, versioned, old, stage, served)
            else:  # not switched, not refused: the configs name `new`, for a retry or restart
                point_disk(repo, new)
            raise error from None
        # the new release serves: the old one's versions go (after their requests in flight)
        stage = "old out"
        for model in versioned:
            pin.set_versions(repo / model / "config.pbtxt", (new,))
            load_model(client, protocol, model)
        ready = {name: client.is_model_ready(name) for name in
                 present(repo, (*ENSEMBLES, *FUSED_MODELS)) if name in served}
    except (InferenceServerException, OSError) as exc:
        error = load_error(url, protocol, exc)
        if stage == "old out":  # switched: only the old release's unloading failed
            raise LoadError(f"the server at {url} serves release {new}, but unloading release "
                            f"{old} failed ({error}); run the same command again",
                            "log") from None
        if stage == "connect" or isinstance(exc, OSError):
            error.next_step = "retry" if error.next_step == "retry" else "log"
        raise error from None
    finally:
        client.close()
    if not all(ready.values()):
        raise LoadError(f"the server at {url} switched to release {new} but "
                        f"{', '.join(n for n, ok in ready.items() if not ok)} is not ready", "log")
    return {"url": url, "protocol": protocol, "from": old, "to": new,
            "seconds": round(time.perf_counter() - t0, 2), **steps}


def _versions_ready(client, protocol: str, model: str) -> list[str]:
    meta = client.get_model_metadata(model)
    return list(meta.versions) if protocol == "grpc" else meta.get("versions", [])


def _restore(repo: Path, client, protocol: str, versioned: list[str], old: int, stage: str,
             served: set[str]) -> None:
    """After a refused load: the configs name `old` again and the server is asked to load them
    (best effort: a model whose new version failed still serves its old one)."""
    from tritonclient.utils import InferenceServerException

    for name in point(repo, old):
        if stage == "switch" and name in served:
            try:
                load_model(client, protocol, name)
            except InferenceServerException:
                pass
    for model in versioned:
        pin.set_versions(repo / model / "config.pbtxt", (old,))
        try:
            load_model(client, protocol, model)
        except InferenceServerException:
            pass
