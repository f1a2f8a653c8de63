"""The commands: `catalog update` (write the scorer's next version from new, changed and removed
items and, with a server, load it) and `catalog load` (load the newest written version, check it
is served, then prune old versions)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.data.catalog import prepare_items
from towerlite.errors import TowerliteError

from .. import catalog as cat
from .. import history_update as history
from .. import index as ix
from ..deploy import software_versions
from ..release import store
from .items_file import preview, read_inputs
from .merge import merge, row_domains
from .server import LoadError, load_on_server
from .versions import flavor_folder, item_tower, serving_version
from .write import write_version

INDEX_CHOICES = ("keep", *ix.INDEX_KINDS)
CHECK_IDS = 100          # ids of each kind recorded in catalog.json and checked on the server

log = logging.getLogger(__name__)


def update(repository: str | Path, items: str | Path | pd.DataFrame | None = None,
           remove: str | Path | Sequence[str] | None = None, *,
           url: str | Sequence[str] | None = None,
           protocol: str = "grpc", index: str = "keep", nprobe: int | None = None,
           threads: int = 2, keep_versions: int = 2, progress: bool = True) -> dict:
    """Write the scorer's next catalog version — the repository's next release, its other
    models carried unchanged — and, with `url`, switch that server to it (or each of several
    replicas serving the same repository, e.g. `replica_urls(...)`). Without `url`, the configs
    on disk name the new release: a server started later serves it, `catalog load` switches a
    running one.

    `items`: a CSV/JSONL file (or an ITEM_COLUMNS frame); an existing id replaces that item, a
    new one is added. `remove`: a file of ids (one a line) or a list. `index`: keep (what the
    current version has, rebuilt), exact, ivf, ivf_sq8, ivf_pq or auto (by size,
    `index.choose`). After a successful load, the newest `keep_versions` versions stay on disk.
    Returns the update's record."""
    t0 = time.perf_counter()
    if index not in INDEX_CHOICES:
        raise TowerliteError(f"unknown index {index!r}; choose from {', '.join(INDEX_CHOICES)}")
    if keep_versions < 1:
        raise TowerliteError("keep_versions must be at least 1 (the version just loaded)")
    repo = flavor_folder(repository)
    store.adopt(repo)
    base = serving_version(repo)
    frame, removed, source = read_inputs(items, remove)
    version = store.next_release(repo)
    try:
        record = _write_next(repo, base, version, frame, removed, source, index, nprobe,
                             threads, progress)
    except BaseException:
        store.remove(repo, version)
        raise
    store.point_disk(repo, version)
    urls = [url] if isinstance(url, str) else list(url or [])
    if urls:
        record["loads"] = load_on_replicas(repo, urls, protocol, version, keep_versions)
        record["load"] = record["loads"][-1]
    store.log_release(repo, {"release": version, "from": base, "kind": "catalog update",
                             "count": record["count"]})
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def _write_next(repo: Path, base: int, version: int, frame: pd.DataFrame, removed: list[str],
                source: dict, index: str, nprobe: int | None, threads: int,
                progress: bool) -> dict:
    """Release `version`: the scorer's catalog (and the history models' table, where deployed)
    of release `base` with `frame`'s items encoded and merged in and `removed` dropped, every
    other model's folder carried. Returns the update's record (also appended to the new
    catalog.json)."""
    old_emb, old_ids, old_meta = cat.read_catalog(repo / "scorer" / str(base) / "catalog")
    known = set(old_ids.tolist())
    unknown = [i for i in removed if i not in known]
    if unknown:
        raise TowerliteError(f"{len(unknown)} id(s) to remove are not in the catalog (version "
                             f"{base}): {preview(unknown)}")

    # encode only the given items, with the catalog's own item tower, in deploy's batches
    t_encode = time.perf_counter()
    domain_order = list(dict.fromkeys([d["name"] for d in old_meta["domains"]]
                                      + frame["domain"].tolist()))
    new, new_emb = _encode_items(repo, frame, old_meta, domain_order, threads, progress)
    encode_s = time.perf_counter() - t_encode

    merged, matrix_t = merge(old_ids, row_domains(old_meta, len(old_ids)), old_emb.T, new,
                             new_emb, set(removed), domain_order)
    added = [i for i in new["item_id"] if i not in known]
    changed = [i for i in new["item_id"] if i in known]
    kind = ix.kind_of(old_meta) if index == "keep" else ix.choose(index, len(merged))
    record = {
        "version": version, "from_version": base,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **source,
        "added": len(added), "changed": len(changed), "removed": len(removed),
        "count_before": len(old_ids), "count": len(merged), "encoded": len(new),
        "encode_seconds": round(encode_s, 2), "index": kind,
        # a few ids of each kind, so `towerlite catalog load` can check a retried load
        "check": {"present": (added + changed)[:CHECK_IDS], "absent": removed[:CHECK_IDS]},
        "versions": software_versions(),
    }
    info = {k: v for k, v in old_meta.items() if k not in ("count", "dim", "domains", "index")}
    info["updates"] = [*old_meta.get("updates", []), record]

    t_write = time.perf_counter()
    folder, meta = write_version(repo, base, merged, matrix_t, info, kind,
                                 nprobe or (old_meta.get("index") or {}).get("nprobe")
                                 or ix.DEFAULT_NPROBE, version=version)
    record = {**record, "path": str(folder), "domains": meta["domains"],
              "write_seconds": round(time.perf_counter() - t_write, 2)}
    log.info(f"wrote scorer version {version}: {len(merged):,} items (+{len(added)} added, "
             f"{len(changed)} changed, -{len(removed)} removed; {len(new)} encoded in "
             f"{encode_s:.1f} s) at {folder}")
    if history.deployed(repo):
        record["history"] = history.write_versions(repo, base, version, new, new_emb,
                                                   set(removed), domain_order)
    record["carried"] = store.carry(repo, base, version)
    return record


def _encode_items(repo: Path, frame: pd.DataFrame, old_meta: dict, domain_order: list[str],
                  threads: int, progress: bool) -> tuple[pd.DataFrame, np.ndarray]:
    """(the given items prepared: rendered, in scorer order; their embeddings by the item tower
    that encoded the catalog)."""
    from towerlite.runtime import OnnxEncoder

    new = prepare_items(frame, domain_order) if len(frame) else \
        pd.DataFrame(columns=["item_id", "domain", "text"])
    new_emb = np.zeros((0, old_meta["dim"]), dtype=np.float32)
    if len(new):
        onnx, tokenizer = item_tower(repo, old_meta)
        encoder = OnnxEncoder(onnx, tokenizer, max_length=old_meta.get("max_length", 128),
                              threads=threads)
        if encoder.dim != old_meta["dim"]:
            raise TowerliteError(f"{onnx} is {encoder.dim}-d; the catalog is {old_meta['dim']}-d")
        new_emb = cat.embed_catalog(new["text"].tolist(), encoder, progress=progress)
    return new, new_emb


def replica_urls(host_port: str) -> list[str]:
    """HOST:PORT → one HOST:PORT per address HOST resolves to: every replica behind a headless
    Kubernetes service (the Helm chart's `<release>-towerlite-replicas`), in a stable order."""
    import socket

    host, sep, port = host_port.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TowerliteError(f"{host_port!r}: give HOST:PORT (e.g. rec-towerlite-replicas:8001)")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TowerliteError(f"cannot resolve {host}: {exc.strerror}") from None
    addresses = sorted({info[4][0] for info in infos})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


def load_on_replicas(repository: str | Path, urls: Sequence[str], protocol: str = "grpc",
                     version: int | None = None, keep_versions: int = 2) -> list[dict]:
    """`load_version` on each server in turn, old releases pruned after the last. A failure
    names the replicas that already serve the new version and those that do not."""
    loaded = []
    for number, url in enumerate(urls):
        last = number == len(urls) - 1
        try:
            loaded.append({"url": url, **load_version(repository, url, protocol, version,
                                                      keep_versions, prune_after=last)})
        except LoadError as exc:
            if loaded:  # some replicas serve it: the configs keep naming it
                store.point_disk(flavor_folder(repository), version or loaded[0]["version"])
            if len(urls) == 1:
                raise
            done = ", ".join(r["url"] for r in loaded) or "none"
            raise LoadError(f"replicas serving the new version: {done}; not loaded on {url} "
                            f"(nor on the {len(urls) - number - 1} after it): {exc}",
                            exc.next_step) from None
    return loaded


def load_version(repository: str | Path, url: str, protocol: str = "grpc",
                 version: int | None = None, keep_versions: int = 2,
                 prune_after: bool = True) -> dict:
    """Switch the server at `url` to the release the configs name (the newest written by
    `catalog update`), check its catalog is served (also the retry after a failed load); then
    prune all but the newest `keep_versions` releases."""
    repo = flavor_folder(repository)
    store.adopt(repo)
    version = version or store.newest_complete(repo)
    meta = json.loads((repo / "scorer" / str(version) / "catalog" / "catalog.json").read_text())
    check = ((meta.get("updates") or [{}])[-1]).get("check") or {}
    if ((meta.get("updates") or [{}])[-1]).get("version") != version:
        check = {}  # a deploy's version 1: nothing recorded to check beyond readiness
    try:
        loaded = load_on_server(repo, url, protocol, version, check.get("present", ()),
                                check.get("absent", ()))
    except LoadError as exc:
        folder = repo / "scorer" / str(version)
        then = {
            "retry": "loading is a separate step: retry it with `towerlite catalog load "
                     f"--repository {repo} --url {url}` once the server runs (a server started "
                     "later serves the newest version anyway)",
            "restart": "restart the server to serve it (it loads the newest version)",
            "rejected": f"the configs name the serving release again; remove {folder}, or "
                        "fix it and run `towerlite catalog load` again",
            "elsewhere": f"is {url} the server of {repo}? (a server started on it serves the "
                         "newest version)",
            "log": "the server's log says more",
        }[exc.next_step]
        raise LoadError(f"scorer version {version} is written completely ({folder}) but was not "
                        f"loaded: {exc}. Nothing is half-written; {then}",
                        exc.next_step) from None
    # several replicas: only after the last one loaded (the others may still serve an old one)
    loaded["pruned"] = store.prune(repo, keep_versions, version) if prune_after else []
    log.info(f"loaded scorer version {version} on {url} in {loaded['load_seconds']} s "
             f"(checked {loaded['checked_present']} added/changed and "
             f"{loaded['checked_absent']} removed ids)"
             + (f"; deleted old version(s) {', '.join(map(str, loaded['pruned']))}"
                if loaded["pruned"] else ""))
    return loaded
