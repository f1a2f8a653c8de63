"""The version store: a flavor folder's numbered scorer versions on disk (the newest, the item
tower that encoded its catalog, pruning the old ones)."""

from __future__ import annotations

import shutil
from pathlib import Path

from towerlite.errors import TowerliteError

from .. import catalog as cat
from .. import history_update as history


def flavor_folder(repository: str | Path) -> Path:
    """The flavor folder holding the scorer (a deploy's OUT root is refused: name the flavor)."""
    repo = Path(repository)
    if not repo.is_dir():
        raise TowerliteError(f"{repo}: no such model repository (run `towerlite deploy`)")
    if not (repo / "scorer" / "config.pbtxt").is_file():
        flavors = sorted(p.name for p in repo.iterdir() if (p / "scorer").is_dir())
        hint = (f"; it holds the flavor folder(s) {', '.join(flavors)}: name one, e.g. "
                f"{repo / flavors[0]} (each flavor you serve is updated on its own)"
                if flavors else " (point --repository at a flavor folder written by deploy)")
        raise TowerliteError(f"{repo} has no scorer model{hint}")
    return repo


def scorer_versions(repo: Path) -> list[int]:
    """The scorer's numeric version folders, oldest first."""
    return sorted(int(p.name) for p in (repo / "scorer").iterdir()
                  if p.is_dir() and p.name.isdigit())


def newest_version(repo: Path) -> int:
    """The newest scorer version, refused unless its catalog is complete."""
    versions = scorer_versions(repo)
    if not versions:
        raise TowerliteError(f"{repo / 'scorer'} has no version folder (run `towerlite deploy`)")
    newest = versions[-1]
    if not (repo / "scorer" / str(newest) / "catalog" / "catalog.json").is_file():
        raise TowerliteError(f"{repo / 'scorer' / str(newest)} has no catalog/catalog.json: an "
                             "incomplete version; remove that folder or redeploy")
    return newest


def item_tower(repo: Path, meta: dict) -> tuple[Path, Path]:
    """(ONNX, tokenizer.json) of the model that encoded the catalog: new items must land in the
    same space, so the file has to be the one whose sha256 catalog.json records."""
    model = meta.get("item_model") or {}
    tokenizer = repo / "item_tokenizer" / "1" / "tokenizer.json"
    if not tokenizer.is_file():
        tokenizer = repo / "tokenizer" / "1" / "tokenizer.json"
    candidates = [(repo / "item_encoder" / "1" / "model.onnx", tokenizer)]
    if model.get("folder") and model.get("file"):
        folder = Path(model["folder"])
        candidates.append((folder / model["file"], folder / "tokenizer.json"))
    for onnx, tok in candidates:
        if onnx.is_file() and tok.is_file() and (
                not model.get("sha256") or cat.sha256_file(onnx) == model["sha256"]):
            return onnx, tok
    looked = " nor ".join(str(onnx) for onnx, _ in candidates)
    raise TowerliteError(f"the item tower that encoded this catalog ({model.get('variant', '?')}, "
                         f"sha256 {str(model.get('sha256'))[:12]}…) is neither {looked}: new "
                         "items must be encoded by the same model as the rest; redeploy instead")


def prune(repo: Path, keep: int) -> list[int]:
    """Delete all but the newest `keep` scorer versions (after the newest is loaded: the one
    before it stays for a rollback). Returns the versions deleted."""
    versions = scorer_versions(repo)
    gone = versions[:-keep] if keep >= 1 else []
    for v in gone:
        shutil.rmtree(repo / "scorer" / str(v))
    if history.deployed(repo):
        history.prune(repo, keep)
    return gone
