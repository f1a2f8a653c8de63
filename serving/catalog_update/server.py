"""Loading a written catalog version on a running server: the release it belongs to is switched
to (serving/release/switch.py), and the server is checked to serve the new catalog."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..release.switch import LoadError, load_error, server_client, switch
from ..repository import FUSED

EXCLUDE_CHUNK = 1000     # ids per check request

__all__ = ["LoadError", "load_on_server"]


def load_on_server(repo: Path, url: str, protocol: str, version: int,
                   present: Sequence[str] = (), absent: Sequence[str] = ()) -> dict:
    """Switch the server at `url` to release `version` (the catalog's scorer version) and
    check it serves it: the scorer's served version is `version`, `present` ids are in its
    catalog and `absent` ids are not, through `recommend` and `recommend_fused`. Raises
    LoadError."""
    from tritonclient.utils import InferenceServerException

    switched = switch(repo, url, protocol, version)
    client = server_client(url, protocol)
    try:
        meta = client.get_model_metadata("scorer")
        served = meta.versions if protocol == "grpc" else meta.get("versions", [])
        fused = client.is_model_ready(FUSED)
    except (InferenceServerException, OSError) as exc:
        raise load_error(url, protocol, exc) from None
    finally:
        client.close()
    if [str(v) for v in served] != [str(version)]:
        raise LoadError(f"the server at {url} switched but serves scorer version(s) "
                        f"{', '.join(map(str, served)) or 'none'}, not {version}", "elsewhere")
    for model in ("recommend", FUSED) if fused else ("recommend",):
        _check_catalog(url, protocol, present, absent, model)
    return {"url": url, "protocol": protocol, "version": version,
            "load_seconds": switched["seconds"],
            "served_versions": [str(v) for v in served], "checked_present": len(present),
            "checked_absent": len(absent), "switch": switched}


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
