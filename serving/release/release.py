"""The commands: `towerlite release` (write the next release from a new user tower and/or a new
item tower with the catalog it embeds, and switch the servers to it) and `--rollback` / `--to`
(switch back to a release still on disk).

    release(ReleaseRequest("runs/repo/portable", user_model="runs/export-v2",
                           urls=("127.0.0.1:8001",)))
    rollback("runs/repo/portable", urls=["127.0.0.1:8001"])

A user tower and the catalog it scores against change together or not at all: release R is
version folder R of every model (store.py), and a server switches all of them at once
(switch.py). Refused before anything is written: a new item tower without the catalog texts it
must re-embed, a tower of another width than the catalog, a new tokenizer where both towers
share one, a new item tower where the history tower (trained on the old item vectors) is
deployed. A release the server refuses is removed, and the old one keeps serving.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.errors import TowerliteError

from .. import catalog as cat
from .. import history_update as history
from .. import index as ix
from ..catalog_update.versions import flavor_folder
from ..catalog_update.write import write_version
from ..deploy import EncoderExport, embed_items, load_export, software_versions
from . import store
from .store import point_disk
from .switch import LoadError, switch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseRequest:
    """What `towerlite release` changes. `user_model` / `item_model`: export folders (their
    `variant` / `item_variant` file); `history_model`: a history tower folder (`towerlite
    history` or `towerlite fold-in` output), its item table built over the release's catalog.
    A new item tower re-embeds the whole catalog: `items` (a CSV/JSONL items file or an
    ITEM_COLUMNS frame) or `catalog` (a packaged one: movielens, bookcrossing, both). `urls`:
    servers to switch (none: the configs on disk name the new release, which a server started
    later serves). `keep`: releases kept on disk."""

    repository: str | Path
    user_model: str | Path | None = None
    variant: str = "int8_dynamic"
    item_model: str | Path | None = None
    item_variant: str | None = None
    history_model: str | Path | None = None
    items: str | Path | pd.DataFrame | None = None
    catalog: str | None = None
    note: str = ""
    urls: tuple[str, ...] = ()
    protocol: str = "grpc"
    keep: int = 3
    threads: int = 2
    progress: bool = True

    def __post_init__(self):
        if self.user_model is None and self.item_model is None and self.history_model is None:
            raise TowerliteError("nothing to release: give a new user tower (--user-model), "
                                 "item tower (--item-model) and/or history tower "
                                 "(--history-model)")
        if self.item_model is not None and self.items is None and self.catalog is None:
            raise TowerliteError("a new item tower needs its catalog embedded by it: give the "
                                 "catalog's items (--items FILE or --catalog NAME)")
        if self.item_model is None and (self.items is not None or self.catalog):
            raise TowerliteError("--items/--catalog re-embed the catalog with a new item tower "
                                 "(--item-model); to change items, use `towerlite catalog update`")
        if self.keep < 2:
            raise TowerliteError("keep must be at least 2 (the release serving and the one "
                                 "before it, for a rollback)")


def release(request: ReleaseRequest) -> dict:
    """Write the next release and switch every server in `request.urls` to it. Returns its
    record (also appended to the flavor folder's releases.json)."""
    t0 = time.perf_counter()
    repo = flavor_folder(request.repository)
    store.adopt(repo)
    base = store.current_release(repo)
    if not store.complete(repo, base):
        raise TowerliteError(f"release {base} (the one the configs name) is incomplete in {repo}; "
                             "redeploy")
    new = store.next_release(repo)
    try:
        written = _write(repo, request, base, new)
    except BaseException:
        store.remove(repo, new)
        raise
    record = {"release": new, "from": base, "kind": "release", "note": request.note, **written,
              "write_seconds": round(time.perf_counter() - t0, 2),
              "versions": software_versions()}
    return _serve(repo, record, list(request.urls), request.protocol, request.keep)


def rollback(repository: str | Path, urls: Sequence[str] = (), protocol: str = "grpc",
             to: int | None = None) -> dict:
    """Switch back to the release before the one serving (or to release `to`, any complete
    one on disk, e.g. forward again after a rollback)."""
    repo = flavor_folder(repository)
    store.adopt(repo)
    serving = store.current_release(repo)
    on_disk = sorted({v for m in store.present(repo, store.VERSIONED)
                      for v in store.versions(repo, m)})
    if to is None:
        older = [v for v in on_disk if v < serving and store.complete(repo, v)]
        if not older:
            raise TowerliteError(f"no release before {serving} is left in {repo} (releases on "
                                 f"disk: {', '.join(map(str, on_disk))}); nothing to roll back to")
        to = older[-1]
    elif not store.complete(repo, to):
        raise TowerliteError(f"release {to} is not (or no longer) complete in {repo} (releases on "
                             f"disk: {', '.join(map(str, on_disk))})")
    record = {"release": to, "from": serving, "kind": "rollback" if to < serving else "switch"}
    return _serve(repo, record, list(urls), protocol, keep=None)


def _serve(repo: Path, record: dict, urls: list[str], protocol: str, keep: int | None) -> dict:
    """Point the configs at the record's release and switch each server to it; a release the
    first server refuses is removed (the configs name the one before again)."""
    new = record["release"]
    point_disk(repo, new)
    switched = []
    for number, url in enumerate(urls):
        try:
            switched.append(switch(repo, url, protocol, new))
        except LoadError as exc:
            done = ", ".join(s["url"] for s in switched) or "none"
            if switched:  # some servers serve it: the configs name it (a refusing server's
                # switch put back the release before), and the log says how far it got
                point_disk(repo, new)
                store.log_release(repo, {**record, "switched": switched, "failed_on": url})
            elif exc.next_step == "rejected" and record["kind"] == "release":
                point_disk(repo, record["from"])
                store.remove(repo, new)
                raise LoadError(f"release {new} was refused by {url} and removed; it keeps "
                                f"serving release {record['from']}: {exc}", exc.next_step) from None
            then = (f"retry with `towerlite release --to {new} --repository {repo} --url {url}`"
                    if exc.next_step in ("retry", "restart") else "the server's log says more")
            raise LoadError(f"release {new} is written; servers switched to it: {done}; not "
                            f"{url} (nor the {len(urls) - number - 1} after it): {exc}; {then}",
                            exc.next_step) from None
    record["switched"] = switched
    record["pruned"] = store.prune(repo, keep, new) if keep else []
    entry = store.log_release(repo, record)
    log.info(f"release {new} ({record['kind']} from {record['from']}) serves"
             + (f" on {', '.join(urls)}" if urls else " from the configs on disk (no server)"))
    return entry


def _write(repo: Path, request: ReleaseRequest, base: int, new: int) -> dict:
    """Release `new`'s folders: the changed towers' files (and a re-embedded catalog), every
    other model's folder of release `base` hard-linked."""
    _, _, meta = cat.read_catalog(repo / "scorer" / str(base) / "catalog")
    shares_tokenizer = not (repo / "item_tokenizer" / "config.pbtxt").is_file()
    changed: dict[str, str] = {}
    user = item = None
    if request.user_model is not None:
        user = load_export(request.user_model, request.variant)
        _check_dim(user, meta["dim"], "user")
        _check_tokenizer(repo, base, user, "tokenizer", shares_tokenizer, "user")
    tower = _history_tower(repo, base, request.history_model) \
        if request.history_model is not None else None
    if request.item_model is not None:
        if history.deployed(repo) and tower is None:
            raise TowerliteError(
                "this repository serves the history tower, trained over the current item "
                "tower's vectors: a new item tower needs a history tower trained on its vectors "
                "(towerlite history --item-model …), released with it (--history-model)")
        item = load_export(request.item_model, request.item_variant or request.variant)
        _check_dim(item, meta["dim"], "item")
        _check_tokenizer(repo, base, item, "item_tokenizer" if not shares_tokenizer
                         else "tokenizer", shares_tokenizer, "item")

    if user is not None:
        _replace(repo, "user_encoder", base, new, {"model.onnx": user.onnx})
        changed["user_encoder"] = user.describe()
        if not shares_tokenizer:
            _replace(repo, "tokenizer", base, new, {"tokenizer.json": user.tokenizer_json})
    if item is not None:
        _replace(repo, "item_encoder", base, new, {"model.onnx": item.onnx})
        changed["item_encoder"] = item.describe()
        if not shares_tokenizer:
            _replace(repo, "item_tokenizer", base, new, {"tokenizer.json": item.tokenizer_json})
        changed["scorer"] = _reembed(repo, request, base, new, item, meta)
    if tower is not None:
        changed["history_encoder"] = _write_history(repo, base, new, tower,
                                                    new if item is not None else base)
    store.carry(repo, base, new)
    return {"changed": changed}


def _history_tower(repo: Path, base: int, folder: str | Path):
    """The new history tower, refused unless the served one's width and length match (the
    configs fix both)."""
    import json

    from towerlite.sequential import SavedTower

    if not history.deployed(repo):
        raise TowerliteError(f"{repo} serves no history tower (deploy --history-model adds "
                             "`recommend_history`); nothing to release it into")
    tower = SavedTower.load(folder)
    served = json.loads((repo / "history_encoder" / str(base) / "history" / "history.json")
                        .read_text())
    if (tower.width, tower.config.max_len) != (served["dim"], served["max_len"]):
        raise TowerliteError(f"the history tower {folder} is {tower.width}-d reading "
                             f"{tower.config.max_len} items; the served one is {served['dim']}-d "
                             f"reading {served['max_len']}: the configs fix both, redeploy")
    if tower.config.use_text and (Path(folder) / "adapter.npz").is_file():
        width = np.load(Path(folder) / "adapter.npz")["mean"].shape[-1]
        _, _, meta = cat.read_catalog(repo / "scorer" / str(base) / "catalog")
        if width != meta["dim"]:
            raise TowerliteError(f"the history tower {folder} reads {width}-d item vectors; the "
                                 f"catalog's are {meta['dim']}-d (it was trained over another "
                                 f"item tower: {tower.item_model or 'unknown'})")
    return tower


def _write_history(repo: Path, base: int, new: int, tower, catalog_release: int) -> dict:
    """history_scorer/<new>/ and history_encoder/<new>/: the tower's item table over release
    `catalog_release`'s catalog (its item vectors), code carried from release `base`."""
    from ..catalog_update.merge import row_domains
    from ..deploy import write_history

    emb, ids, meta = cat.read_catalog(repo / "scorer" / str(catalog_release) / "catalog")
    prepared = pd.DataFrame({"item_id": ids, "domain": row_domains(meta, len(ids))})
    table = tower.item_table(list(ids), np.asarray(emb))
    scorer = store.staged(repo, "history_scorer", base, new)
    encoder = store.staged(repo, "history_encoder", base, new)
    shutil.rmtree(scorer / "catalog")  # the links only: release `base` keeps its files
    shutil.rmtree(encoder / "history")
    info = {k: v for k, v in meta.items() if k not in ("count", "dim", "domains", "index")}
    # the index kind release `base`'s history scorer had, as the text scorer's is kept
    served = json.loads((repo / "history_scorer" / str(base) / "catalog" / "catalog.json")
                        .read_text())
    write_history(scorer, encoder, (tower, table), prepared, info, ix.kind_of(served),
                  (served.get("index") or {}).get("nprobe"))
    store.publish(repo, "history_scorer", scorer, new)
    store.publish(repo, "history_encoder", encoder, new)
    return {"folder": str(tower.folder), "kind": tower.config.kind, "count": len(ids)}


def _check_dim(export: EncoderExport, dim: int, tower: str) -> None:
    if export.dim != dim:
        raise TowerliteError(f"the new {tower} tower ({export.onnx}) is {export.dim}-d; the "
                             f"served catalog is {dim}-d: both towers must land in one space")


def _check_tokenizer(repo: Path, base: int, export: EncoderExport, model: str,
                     shared: bool, tower: str) -> None:
    current = repo / model / str(base) / "tokenizer.json"
    if shared and current.is_file() and \
            cat.sha256_file(current) != cat.sha256_file(export.tokenizer_json):
        raise TowerliteError(f"the new {tower} tower's tokenizer differs from the one both "
                             "towers share in this repository: deploy it instead (a deploy "
                             "with two tokenizers writes item_tokenizer)")


def _replace(repo: Path, model: str, base: int, new: int, files: dict[str, Path]) -> None:
    """`model`'s release `new`: release `base`'s folder hard-linked, `files` copied over (a
    linked file is unlinked first: release `base` keeps its own)."""
    staging = store.staged(repo, model, base, new)
    for name, source in files.items():
        (staging / name).unlink(missing_ok=True)
        shutil.copy2(source, staging / name)
    store.publish(repo, model, staging, new)


def _reembed(repo: Path, request: ReleaseRequest, base: int, new: int, item: EncoderExport,
             meta: dict) -> dict:
    """scorer/<new>/: the catalog's items embedded by the new item tower (cached and resumable,
    deploy's embedding step), with the index kind release `base` had."""
    from towerlite.data.catalog import prepare_items, scorer_order

    from ..catalog_update.items_file import read_items

    if request.catalog:  # already rendered (item_id, domain, text)
        frame = cat.catalog_items(cat.catalog_names(request.catalog))
    elif isinstance(request.items, pd.DataFrame):
        frame = request.items
    else:
        frame = read_items(request.items)
    domain_order = list(dict.fromkeys([d["name"] for d in meta["domains"]]
                                      + frame["domain"].tolist()))
    prepared = scorer_order(frame, domain_order) if request.catalog else \
        prepare_items(frame, domain_order)  # in the scorer's order
    t0 = time.perf_counter()
    emb, _, _ = embed_items(prepared, item, item.max_length, request.threads,
                            progress=request.progress)
    encode_s = time.perf_counter() - t0
    info = {k: v for k, v in meta.items()
            if k not in ("count", "dim", "domains", "index", "updates", "item_model")}
    info["item_model"] = item.describe()
    info["max_length"] = item.max_length
    kind = ix.kind_of(meta)  # the base's: an exact catalog stays exact, as catalog update keeps it
    nprobe = (meta.get("index") or {}).get("nprobe") or ix.DEFAULT_NPROBE
    folder, written = write_version(repo, base, prepared[["item_id", "domain"]],
                                    np.ascontiguousarray(emb.T), info, kind, nprobe,
                                    version=new)
    return {"count": written["count"], "index": kind, "encode_seconds": round(encode_s, 2),
            "path": str(folder)}
