"""The asset registry: fetch, verify and cache the real models and data towerlite uses."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import TowerliteError
from .registry import ASSETS, MODEL_ALIASES, Asset, Package
from .store import asset_dir, check, install

__all__ = ["ASSETS", "MODEL_ALIASES", "Asset", "Package", "get_asset", "ensure", "prepare"]

log = logging.getLogger(__name__)


def get_asset(name: str) -> Asset:
    try:
        return ASSETS[MODEL_ALIASES.get(name, name)]
    except KeyError:
        raise TowerliteError(f"unknown asset {name!r}; known: {', '.join(ASSETS)}") from None


def ensure(name: str) -> Path:
    """The folder of a cached asset, fetched first if it is missing or damaged.

    Checks sizes only (cheap enough for every load); `prepare` re-hashes every file.
    """
    asset = get_asset(name)
    status = check(asset, full=False)
    if status.state != "ok":
        detail = " (" + status.detail + ")" if status.detail else ""
        log.info(f"{asset.name}: {status.state}{detail}; fetching")
        install(asset)
    return asset_dir(asset.name)


def prepare(names: list[str] | None = None) -> list[dict]:
    """Fetch and verify the named assets (all when none are named); a row per asset."""
    assets = [get_asset(n) for n in names] if names else list(ASSETS.values())
    rows = []
    for asset in assets:
        status = check(asset, full=True)
        if status.state == "ok":
            log.info(f"✓ {asset.name}: in place, verified; nothing downloaded")
            action = "in place"
        else:
            why = f" ({status.detail})" if status.detail else ""
            log.info(f"↓ {asset.name}: {status.state}{why}; fetching {asset.sources}")
            status = install(asset)
            log.info(f"✓ {asset.name}: fetched and verified in "
                     f"{status.manifest['fetch_seconds']} s")
            action = "fetched"
        manifest = status.manifest
        rows.append({"name": asset.name, "action": action, "path": str(asset_dir(asset.name)),
                     "size_bytes": manifest["size_bytes"],
                     "fetch_seconds": manifest["fetch_seconds"], "sources": manifest["sources"]})
    return rows

