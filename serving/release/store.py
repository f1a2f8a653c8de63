"""Releases on disk. Release R of a flavor folder is version folder R of every versioned model
(tokenizers, encoders, scorer and its catalog, the history models); a model a release did not
change gets its previous folder hard-linked (no bytes copied, and the page cache shares one
copy of a memory-mapped catalog between the two releases while both are loaded). What each
release was is logged in releases.json; which one is served is what the configs say (pin.py)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from towerlite.errors import TowerliteError

from ..repository import FUSED, HISTORY_FUSED
from . import pin

# load order on a server: the scorers before the encoders (a catalog is the slow part)
VERSIONED = ("scorer", "history_scorer", "tokenizer", "item_tokenizer", "user_encoder",
             "item_encoder", "history_encoder")
ENSEMBLES = ("recommend", "embed_items", "recommend_history")
FUSED_MODELS = (FUSED, HISTORY_FUSED)
LOG = "releases.json"


def point(repo: Path, release: int) -> list[str]:
    """Write the ensembles' and fused models' configs for `release`; returns their names."""
    names = present(repo, (*ENSEMBLES, *FUSED_MODELS))
    for name in names:
        config = repo / name / "config.pbtxt"
        if name in ENSEMBLES:
            pin.pin_steps(config, release)
        else:
            pin.set_release_parameter(config, release)
    return names


def point_disk(repo: Path, release: int) -> None:
    """The configs on disk serve `release` alone: what a server (re)started on them loads."""
    for model in present(repo, VERSIONED):
        pin.set_versions(repo / model / "config.pbtxt", (release,))
    point(repo, release)


def adopt(repo: Path) -> int | None:
    """A repository written before releases (its ensembles take each model's newest version)
    becomes one: its newest scorer version is its release, every other model's newest folder is
    hard-linked under that number, and the configs are pinned to it. Returns that release (None
    when the repository names one already)."""
    if pin.pinned_release(repo / "recommend" / "config.pbtxt") is not None:
        return None
    found = versions(repo, "scorer")
    if not found:
        raise TowerliteError(f"{repo / 'scorer'} has no version folder (run `towerlite deploy`)")
    release = found[-1]
    for model in present(repo, VERSIONED):
        if not (repo / model / str(release)).is_dir():
            newest = versions(repo, model)[-1]
            publish(repo, model, staged(repo, model, newest, release), release)
    point_disk(repo, release)
    return release


def present(repo: Path, names: Iterable[str]) -> list[str]:
    return [n for n in names if (repo / n / "config.pbtxt").is_file()]


def versions(repo: Path, model: str) -> list[int]:
    return sorted(int(p.name) for p in (repo / model).iterdir() if p.is_dir() and p.name.isdigit())


def complete(repo: Path, release: int) -> bool:
    """Every versioned model has release `release`'s folder."""
    return all((repo / m / str(release)).is_dir() for m in present(repo, VERSIONED))


def current_release(repo: Path) -> int:
    """The release the configs serve: the one `recommend`'s steps name (a repository written
    before releases serves the newest scorer version)."""
    pinned = pin.pinned_release(repo / "recommend" / "config.pbtxt")
    if pinned is None:
        found = versions(repo, "scorer")
        if not found:
            raise TowerliteError(f"{repo / 'scorer'} has no version folder (run `towerlite "
                                 "deploy`)")
        pinned = found[-1]
    return pinned


def newest_complete(repo: Path) -> int:
    """The newest release whose folders are all on disk (`catalog load`: what to load)."""
    numbers = sorted({v for m in present(repo, VERSIONED) for v in versions(repo, m)})
    complete_ones = [v for v in numbers if complete(repo, v)]
    if not complete_ones:
        raise TowerliteError(f"{repo} holds no complete release (run `towerlite deploy`)")
    return complete_ones[-1]


def next_release(repo: Path) -> int:
    """One past every version folder of every model (a rolled-back release's number is not
    reused: its folders may still be loaded somewhere)."""
    numbers = [v for m in present(repo, VERSIONED) for v in versions(repo, m)]
    logged = [r["release"] for r in releases(repo)]
    return max([*numbers, *logged, 0]) + 1


def releases(repo: Path) -> list[dict]:
    """The log, oldest first (a repository deployed before releases: empty)."""
    path = repo / LOG
    return json.loads(path.read_text())["releases"] if path.is_file() else []


def log_release(repo: Path, entry: dict) -> dict:
    entry = {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **entry}
    path = repo / LOG
    tmp = path.with_name(f".{LOG}.tmp")
    tmp.write_text(json.dumps({"releases": [*releases(repo), entry]}, indent=1))
    os.replace(tmp, path)
    return entry


def carry(repo: Path, base: int, release: int, skip: Iterable[str] = ()) -> list[str]:
    """Release `release`'s folder of every versioned model not in `skip`: release `base`'s,
    hard-linked (built under a name Triton ignores, then renamed into place). Returns them."""
    carried = []
    for model in present(repo, VERSIONED):
        if model in set(skip) or (repo / model / str(release)).is_dir():
            continue
        publish(repo, model, staged(repo, model, base, release), release)
        carried.append(model)
    return carried


def staged(repo: Path, model: str, base: int, release: int) -> Path:
    """A staging copy (hard links) of `model`'s release `base`, to change files in: replace a
    file by writing a new one, never by writing into a linked one. `publish` renames it."""
    staging = repo / model / f".staging-{release}"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(repo / model / str(base), staging, copy_function=os.link)
    return staging


def publish(repo: Path, model: str, staging: Path, release: int) -> Path:
    final = repo / model / str(release)
    if final.exists():
        raise TowerliteError(f"{final} exists already (another release?); run it again")
    staging.rename(final)
    return final


def remove(repo: Path, release: int) -> None:
    """Every folder of a release that never served (a refused load, a failed write)."""
    for model in present(repo, VERSIONED):
        shutil.rmtree(repo / model / str(release), ignore_errors=True)
        shutil.rmtree(repo / model / f".staging-{release}", ignore_errors=True)


def prune(repo: Path, keep: int, serving: int) -> list[int]:
    """Delete all but the newest `keep` releases, never the one serving. Returns those deleted."""
    numbers = sorted({v for m in present(repo, VERSIONED) for v in versions(repo, m)})
    kept = set(numbers[-keep:] if keep >= 1 else []) | {serving}
    gone = [v for v in numbers if v not in kept]
    for v in gone:
        for model in present(repo, VERSIONED):
            shutil.rmtree(repo / model / str(v), ignore_errors=True)
    return gone
