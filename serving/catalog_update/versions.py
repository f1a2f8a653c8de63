"""The scorer's versions on disk: the one the configs serve, the item tower that encoded its
catalog (releases as a whole: serving/release/store.py)."""

from __future__ import annotations

from pathlib import Path

from towerlite.errors import TowerliteError

from .. import catalog as cat


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
    from ..release.store import versions

    return versions(repo, "scorer")


def serving_version(repo: Path) -> int:
    """The scorer version (= release) the configs serve, refused unless its catalog is
    complete."""
    from ..release.store import current_release

    version = current_release(repo)
    if not (repo / "scorer" / str(version) / "catalog" / "catalog.json").is_file():
        raise TowerliteError(f"{repo / 'scorer' / str(version)} has no catalog/catalog.json: an "
                             "incomplete version; remove that folder or redeploy")
    return version


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
