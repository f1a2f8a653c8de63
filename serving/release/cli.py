"""`towerlite release`: write the next release and switch servers to it; `--rollback`, `--to N`,
`--list`."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Serve a new user tower, item tower and/or history tower as one release. Release R is version "
    "folder R of every model in REPO (a model the release does not change is hard-linked from "
    "the serving release); the configs name one release, so a server (re)started on REPO never "
    "mixes a user tower of one release with a catalog of another. A new item tower re-embeds "
    "the whole catalog (--items or --catalog). With --url, each server is switched while it "
    "answers: both releases loaded, then the ensembles and fused models pointed at the new one, "
    "then the old one unloaded; every answer's RELEASE output says which release served it. A "
    "release a server refuses is removed and the old one keeps serving. --rollback switches back "
    "to the release before the serving one (kept on disk: --keep), --to N to any release on disk.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, required=True,
                   help="a flavor folder written by deploy, e.g. OUT/portable")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--rollback", action="store_true",
                      help="switch back to the release before the serving one")
    what.add_argument("--to", type=int, metavar="N", help="switch to release N (on disk)")
    what.add_argument("--list", action="store_true", help="the releases on record, and exit")
    p.add_argument("--user-model", type=Path, metavar="EXPORT_DIR",
                   help="the new user tower: a `towerlite export` folder")
    p.add_argument("--variant", default="int8_dynamic",
                   help="ONNX variant of the new towers (default int8_dynamic)")
    p.add_argument("--item-model", type=Path, metavar="EXPORT_DIR",
                   help="the new item tower (re-embeds the catalog: --items or --catalog)")
    p.add_argument("--item-variant", help="ONNX variant of the new item tower (default --variant)")
    p.add_argument("--history-model", type=Path, metavar="TOWER_DIR",
                   help="the new history tower (`towerlite history` or `towerlite fold-in` "
                        "output), its item table built over the release's catalog")
    items = p.add_mutually_exclusive_group()
    items.add_argument("--items", type=Path,
                       help="CSV or JSON Lines file of the catalog's items, as catalog update's")
    items.add_argument("--catalog", choices=["movielens", "bookcrossing", "both"],
                       help="a packaged catalog for the new item tower to embed")
    p.add_argument("--note", default="", help="a line recorded with the release")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", action="append", metavar="HOST:PORT",
                       help="a running server on REPO (model control explicit): switch it; "
                            "repeat for replicas sharing REPO (switched in turn)")
    where.add_argument("--each-address-of", metavar="HOST:PORT",
                       help="every address HOST resolves to (the Helm chart's replicas service)")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"])
    p.add_argument("--keep", type=int, default=3,
                   help="releases kept on disk after a release (default 3; at least 2)")
    p.add_argument("--threads", type=int, default=2,
                   help="onnxruntime threads for re-embedding the catalog (default 2)")


def command(args: argparse.Namespace) -> int:
    from ..catalog_update import replica_urls
    from ..catalog_update.versions import flavor_folder
    from . import ReleaseRequest, current_release, release, releases, rollback

    if args.list:
        repo = flavor_folder(args.repository)
        serving = current_release(repo)
        for r in releases(repo) or [{"release": serving, "kind": "deploy"}]:
            mark = "*" if r["release"] == serving else " "
            print(f"{mark} {r['release']:>4}  {r.get('at', ''):<25} {r['kind']:<15} "
                  f"from {r.get('from', '-')}  {r.get('note', '')}".rstrip())
        return 0
    urls = replica_urls(args.each_address_of) if args.each_address_of else (args.url or [])
    if args.rollback or args.to is not None:
        r = rollback(args.repository, urls, args.protocol, to=args.to)
    else:
        r = release(ReleaseRequest(
            args.repository, user_model=args.user_model, variant=args.variant,
            item_model=args.item_model, item_variant=args.item_variant,
            history_model=args.history_model, items=args.items,
            catalog=args.catalog, note=args.note, urls=tuple(urls), protocol=args.protocol,
            keep=args.keep, threads=args.threads))
    where = f"serving on {', '.join(urls)}" if urls else \
        "named by the configs on disk (a server started on the repository serves it)"
    changed = ", ".join(r.get("changed", {})) or "no model written"
    print(f"release {r['release']} ({r['kind']} from {r['from']}; {changed}): {where}"
          + (f"; deleted releases {', '.join(map(str, r['pruned']))}" if r.get("pruned") else ""))
    return 0
