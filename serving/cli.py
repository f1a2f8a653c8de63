"""`towerlite deploy`, `serve` and `catalog` (also `python -m towerlite.serving
deploy|serve|catalog|release`; `release` lives in release/cli.py)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from towerlite.entry import run
from towerlite.errors import TowerliteError

from .deploy import VARIANT_FILES
from .index import INDEX_KINDS
from .repository import FLAVORS

DEPLOY_DESCRIPTION = (
    "Write the two-tower Triton model repository: tokenizer → user_encoder / item_encoder → "
    "scorer, and the ensembles `recommend` (user text → top-k item ids, scores, domains) and "
    "`embed_items` (item text → embeddings). The catalog's item texts are rendered by "
    "towerlite.data.render, embedded by the item tower (progress bar, cached per model under "
    "$TOWERLITE_HOME/catalog-embeddings) and written into the scorer's version folder. Writes "
    "OUT/portable/ (encoders as python models; runs on the pip-installed Triton, `towerlite "
    "serve`), OUT/native/ (encoders on the onnxruntime_onnx platform for the NGC container) and "
    "OUT/deploy_report.json. Every config.pbtxt is checked against Triton's ModelConfig.")

SERVE_DESCRIPTION = (
    "Start the pip-installed Triton server (2.51, from nvidia-pytriton) on a model repository "
    "written by `towerlite deploy`, bound to 127.0.0.1 on free ports unless given, wait until "
    "every model is ready, print the endpoints, and run until Ctrl-C or SIGTERM, then stop "
    "cleanly. Says why when the server cannot start (port in use, a model's own load error). "
    "Model control is explicit by default: every model loads at start and `towerlite catalog "
    "update` can load new catalog versions while it runs.")

CATALOG_DESCRIPTION = (
    "Change the served catalog without a redeploy. `update` reads the scorer's newest catalog "
    "version in a repository written by deploy, renders the given items (CSV or JSON Lines with "
    "the columns item_id, domain, title, year, genres, author, publisher; an existing item_id "
    "replaces that item, a new one is added; --remove drops ids), encodes only those with the "
    "item tower that encoded the catalog, and writes REPO/scorer/N+1/ atomically (built under a "
    "temporary name, then renamed; the IVF index is rebuilt if the catalog has one). With --url "
    "it loads that version on the running server through Triton's repository API: the old "
    "version answers until the new one is ready, so no request fails; then it checks the "
    "server serves the new items and not the removed ones, and deletes versions older than the "
    "previous one. Loading is a separate step: if it fails, the written version stays and "
    "`load` retries it.")


def add_deploy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user-model", required=True, type=Path,
                   help="export folder (from `towerlite export`) for the user tower")
    p.add_argument("--item-model", type=Path,
                   help="export folder for the item tower (default: the user model); it must "
                        "embed into the same space, e.g. the teacher for a student distilled "
                        "into the teacher's space")
    p.add_argument("--variant", default="int8_dynamic", choices=list(VARIANT_FILES),
                   help="ONNX variant of the user tower, and of the item tower unless "
                        "--item-variant (default int8_dynamic)")
    p.add_argument("--item-variant", choices=list(VARIANT_FILES),
                   help="ONNX variant of the item tower (also embeds the catalog)")
    p.add_argument("--native-variant", choices=list(VARIANT_FILES),
                   help="variant for the native flavor's (GPU) encoders (default: fp16 where "
                        "the export has it, else the portable ones)")
    p.add_argument("--catalog", default="movielens", choices=["movielens", "bookcrossing", "both"],
                   help="items to serve (default movielens; both ≈ 275k items)")
    p.add_argument("--limit", type=int, help="only the first N items of each dataset (trials)")
    p.add_argument("--out", type=Path, default=Path("model_repository"),
                   help="repository root (default model_repository); flavors go in OUT/FLAVOR/")
    p.add_argument("--flavor", default="both", choices=[*FLAVORS, "both"],
                   help="which flavor(s) to write (default both)")
    p.add_argument("--tensorrt", action="store_true",
                   help="native flavor: enable the TensorRT execution accelerator (FP16)")
    p.add_argument("--native-kind", default="gpu", choices=["gpu", "cpu"],
                   help="native flavor: encoder instances on the GPU (default; fp16 where the "
                        "export has it) or the CPU (a CPU-only node; the portable variant, "
                        "instances and threads)")
    p.add_argument("--index", default="auto", choices=INDEX_KINDS,
                   help="scorer search: exact, ivf (FAISS IVF-Flat beside the exact matrix), "
                        "ivf_sq8 / ivf_pq (8-bit / product-quantized codes, candidates re-scored "
                        "exactly; ¼ / 1/32 the size), or auto (by catalog size, default; "
                        "docs/serving.md, Scale); the history scorer's item table gets the same "
                        "kind. recall@10 vs exact is measured and recorded")
    p.add_argument("--nprobe", type=int,
                   help="IVF lists visited per query (default 32; the history scorer's: the "
                        "fewest of 32, 64, 128, 256 whose recall@10 on the tower's own users "
                        "reaches 0.95; 128 for a tower saved without training histories)")
    p.add_argument("--threads", type=int, default=2,
                   help="onnxruntime threads for embedding the catalog (default 2)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes embedding the catalog, the threads split between them "
                        "(default 1; resumable with any count; docs/serving.md, scale)")
    p.add_argument("--history-model", type=Path, metavar="FOLDER",
                   help="a `towerlite history` folder: also serve `recommend_history` (liked item "
                        "ids → top-k, no tokenizer) over the same catalog")
    p.add_argument("--spec", action="append", default=[], metavar="FIELD=JSON",
                   help="any serving setting of serving.repository.RepositorySpec, e.g. "
                        "--spec user_encoder_instances=1 --spec user_encoder_threads=2 "
                        "--spec 'buckets=[16,32,64,128]'")


def spec_settings(items: list[str]) -> dict:
    """--spec FIELD=JSON pairs → RepositorySpec fields (lists become tuples)."""
    import json
    from dataclasses import fields

    from .repository import RepositorySpec

    known = {f.name for f in fields(RepositorySpec)} - {"dim", "max_length", "item_tokenizer"}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in known:
            raise TowerliteError(f"--spec {item!r}: expected FIELD=JSON with FIELD one of "
                                 f"{', '.join(sorted(known))}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TowerliteError(f"--spec {item!r}: {value!r} is not JSON") from None
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def deploy_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .deploy import DeployRequest, run_deploy
    from .repository import RepositorySpec

    if args.limit is not None and args.limit < 1:
        raise TowerliteError("--limit must be at least 1")
    flavors = FLAVORS if args.flavor == "both" else (args.flavor,)
    spec = replace(RepositorySpec(), tensorrt=args.tensorrt, native_kind=args.native_kind,
                   **spec_settings(args.spec))
    report = run_deploy(DeployRequest(
        args.user_model, args.out, item_model=args.item_model, variant=args.variant,
        item_variant=args.item_variant, native_variant=args.native_variant,
        catalog=args.catalog, limit=args.limit, flavors=flavors, spec=spec, index=args.index,
        nprobe=args.nprobe, threads=args.threads, workers=args.workers,
        history_model=args.history_model))
    c = report["catalog"]
    print(f"deployed {c['count']:,} items ({c['dim']}-d) to "
          f"{', '.join(report['repositories'].values())} in {report['seconds']} s")
    if "portable" in report["repositories"]:
        print(f"next: towerlite serve --repository {report['repositories']['portable']}")
    if "native" in report["repositories"]:
        from .deploy import container_command

        kind = report["spec"]["native_kind"]
        print(f"native flavor ({kind.upper()} encoders: {report['native_encoders']['user']}), "
              "in the stock Triton container:\n"
              + container_command(report["repositories"]["native"], kind,
                                  bool(report.get("history_tower"))))
    return 0


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, default=Path("model_repository/portable"),
                   help="a flavor folder written by deploy (default model_repository/portable)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, help="HTTP port (default: a free one)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default: a free one)")
    p.add_argument("--metrics-port", type=int, help="metrics port (default: a free one)")
    p.add_argument("--log", type=Path, help="server log file (default: a temporary file)")
    p.add_argument("--ready-timeout", type=float, default=180.0,
                   help="seconds to wait for every model to load (default 180)")
    p.add_argument("--model-control", default="explicit", choices=["explicit", "none"],
                   help="explicit (default): models can be loaded while it runs, which "
                        "`towerlite catalog update --url` needs; none: the model set is fixed "
                        "(anyone who reaches the ports can otherwise load and unload models)")


def _restart_dead_stubs(watch, model_control: str, warned: set) -> None:
    """A python stub that died leaves its model READY and failing a request a second: reload
    it (explicit model control), or say so once (none)."""
    try:
        dead = watch.dead()
    except Exception:  # noqa: BLE001  (a server going down: the liveness check reports it)
        return
    for model in dead:
        if model_control != "explicit":
            if model not in warned:
                warned.add(model)
                print(f"warning: a python stub of {model} died; with model control none it "
                      "cannot be restarted: restart the server", file=sys.stderr, flush=True)
            continue
        try:
            seconds = watch.restart(model)
            print(f"a python stub of {model} died; reloaded {model} ({seconds:.1f} s)",
                  file=sys.stderr, flush=True)
        except Exception as exc:  # noqa: BLE001  (reported; the loop keeps watching)
            print(f"a python stub of {model} died and reloading it failed: {exc}",
                  file=sys.stderr, flush=True)


def serve_command(args: argparse.Namespace) -> int:
    from .triton import StubWatch, launch

    repository = args.repository
    if (repository / "portable").is_dir() and not (repository / "scorer").is_dir():
        repository = repository / "portable"
    server = launch(repository, host=args.host, http_port=args.http_port,
                    grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                    log_path=args.log, ready_timeout=args.ready_timeout,
                    model_control=args.model_control)
    stop = threading.Event()

    def _stop(signum, frame):
        stop.set()

    control = args.model_control + (" (`towerlite catalog update --url` loads new catalog "
                                     "versions)" if args.model_control == "explicit" else "")
    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"Triton is ready on {server.repository}\n"
              f"  HTTP     http://{server.http_url}\n  gRPC     {server.grpc_url}\n"
              f"  metrics  {server.metrics_url}\n  id       {server.server_id}\n"
              f"  log      {server.log_path}\n"
              f"  control  {control}\n"
              f"  memory   {server.rss_bytes() / (1 << 20):,.0f} MB RSS "
              f"({server.pss_bytes() / (1 << 20):,.0f} MB PSS)\n"
              "Ctrl-C stops it.", flush=True)
        watch, warned = StubWatch(server), set()
        while not stop.wait(1.0):
            if not server.alive():
                from .triton import explain_log

                raise TowerliteError(f"tritonserver exited (code {server.process.returncode}):\n  "
                                     f"{explain_log(server.log_text())}\n  log: {server.log_path}")
            _restart_dead_stubs(watch, args.model_control, warned)
        print("stopping Triton …", file=sys.stderr, flush=True)
    finally:
        server.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("stopped", file=sys.stderr)
    return 0


def add_catalog_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    u = actions.add_parser("update", help="write the scorer's next catalog version (and load it)",
                           description=CATALOG_DESCRIPTION)
    _repository_and_server(u)
    u.add_argument("--items", type=Path,
                   help="CSV or JSON Lines file of new or changed items (item_id, domain, title, "
                        "year, genres, author, publisher)")
    u.add_argument("--remove", type=Path, metavar="IDS_FILE",
                   help="file of item ids to remove, one a line")
    u.add_argument("--index", default="keep", choices=["keep", *INDEX_KINDS],
                   help="search of the new version: keep (what the current one has, its index "
                        "rebuilt; default), or as deploy's --index")
    u.add_argument("--nprobe", type=int, help="IVF lists visited per query (default: as before)")
    u.add_argument("--threads", type=int, default=2,
                   help="onnxruntime threads for encoding the items (default 2)")
    u.add_argument("--keep-versions", type=int, default=2,
                   help="after a successful load, the newest N versions stay on disk (default 2: "
                        "the previous one stays for a rollback)")
    ld = actions.add_parser("load", help="load the newest written catalog version on a server "
                                         "(a retry after a failed update --url)",
                            description="Load the scorer's newest catalog version in REPO on the "
                                        "running server at --url (Triton's repository API) and "
                                        "check it is served; what `catalog update --url` does "
                                        "after writing, on its own for a retry.")
    _repository_and_server(ld, url_required=True)
    ld.add_argument("--keep-versions", type=int, default=2,
                    help="after loading, the newest N versions stay on disk (default 2)")


def _repository_and_server(p: argparse.ArgumentParser, url_required: bool = False) -> None:
    p.add_argument("--repository", type=Path, required=True,
                   help="a flavor folder written by deploy, e.g. OUT/portable")
    where = p.add_mutually_exclusive_group(required=url_required)
    where.add_argument("--url", action="append", metavar="HOST:PORT",
                       help="a running server on that repository: load the new version there "
                            "(the gRPC port, or the HTTP port with --protocol http); repeat it "
                            "for replicas sharing the repository (loaded in turn)")
    where.add_argument("--each-address-of", metavar="HOST:PORT",
                       help="every address HOST resolves to: the replicas behind a headless "
                            "Kubernetes service (the Helm chart's <release>-towerlite-replicas)")
    p.add_argument("--protocol", default="grpc", choices=["grpc", "http"],
                   help="protocol of --url (default grpc)")


def catalog_command(args: argparse.Namespace) -> int:
    from .catalog_update import load_on_replicas, replica_urls, update

    urls = replica_urls(args.each_address_of) if args.each_address_of else (args.url or [])
    shown = ", ".join(urls)
    # progress goes to the loggers (stderr); stdout stays the summary
    if args.action == "load":
        loaded = load_on_replicas(args.repository, urls, args.protocol,
                                  keep_versions=args.keep_versions)
        print(f"serving scorer version(s) {', '.join(loaded[-1]['served_versions'])} on {shown}")
        return 0
    if args.items is None and args.remove is None:
        raise TowerliteError("give --items FILE (new or changed items) and/or --remove IDS_FILE")
    r = update(args.repository, args.items, args.remove, url=urls, protocol=args.protocol,
               index=args.index, nprobe=args.nprobe, threads=args.threads,
               keep_versions=args.keep_versions)
    where = f"loaded on {shown}" if urls else \
        f"not loaded (next: towerlite catalog load --repository {args.repository} --url HOST:PORT)"
    print(f"catalog version {r['version']}: {r['count']:,} items (+{r['added']} added, "
          f"{r['changed']} changed, -{r['removed']} removed) in {r['seconds']} s; {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m towerlite.serving")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("deploy", description=DEPLOY_DESCRIPTION)
    add_deploy_arguments(p)
    p.set_defaults(func=deploy_command)
    p = sub.add_parser("serve", description=SERVE_DESCRIPTION)
    add_serve_arguments(p)
    p.set_defaults(func=serve_command)
    p = sub.add_parser("catalog", description=CATALOG_DESCRIPTION)
    add_catalog_arguments(p)
    p.set_defaults(func=catalog_command)
    from .release import cli as release_cli

    p = sub.add_parser("release", description=release_cli.DESCRIPTION)
    release_cli.add_arguments(p)
    p.set_defaults(func=release_cli.command)
    args = parser.parse_args(argv)
    return run(args.func, args)
