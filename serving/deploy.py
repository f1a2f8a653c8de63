"""`towerlite deploy`: exported encoder(s) + a catalog → a Triton model repository per flavor.

    OUT/portable/   tokenizer, user_encoder, item_encoder (python + onnxruntime), scorer,
                    recommend, embed_items — served by the pip-installed Triton (`towerlite serve`)
    OUT/native/     the same with encoders on the onnxruntime_onnx platform (stock NGC container)
    OUT/deploy_report.json   inputs, settings, catalog counts, timings, versions

Each flavor is built in OUT/.FLAVOR.staging, validated (every config.pbtxt parsed against
Triton's ModelConfig), then renamed into place, so a failed deploy leaves the last good one.
Weights and catalog files are hard-linked between flavors when the file system allows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.data.catalog import prepare_items
from towerlite.errors import TowerliteError
from towerlite.files import replace_dir
from towerlite.machine import package_versions
from towerlite.runtime import VARIANT_FILES

from . import catalog as cat
from . import index as ix
from .repository import FLAVORS, RepositorySpec, validate_repository, write_code

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncoderExport:
    """One exported encoder variant, as `towerlite export` wrote it."""

    folder: Path
    variant: str
    onnx: Path
    tokenizer_json: Path
    dim: int
    max_length: int
    source_model: str

    def describe(self) -> dict:
        return {"folder": str(self.folder), "variant": self.variant, "file": self.onnx.name,
                "sha256": cat.sha256_file(self.onnx), "dim": self.dim,
                "max_length": self.max_length, "source_model": self.source_model}


def load_export(folder: str | Path, variant: str) -> EncoderExport:
    folder = Path(folder)
    if variant not in VARIANT_FILES:
        raise TowerliteError(f"unknown variant {variant!r}; choose from {', '.join(VARIANT_FILES)}")
    if not folder.is_dir():
        raise TowerliteError(f"{folder}: no such export folder (make one with `towerlite export`)")
    onnx = folder / VARIANT_FILES[variant]
    tok = folder / "tokenizer.json"
    present = sorted(v for v, f in VARIANT_FILES.items() if (folder / f).is_file())
    if not onnx.is_file():
        raise TowerliteError(f"{folder} has no {variant} variant ({onnx.name}); it has "
                             f"{', '.join(present) or 'no ONNX file'}")
    if not tok.is_file():
        raise TowerliteError(f"{folder} has no tokenizer.json (an export folder carries it)")
    report = {}
    if (folder / "export_report.json").is_file():
        report = json.loads((folder / "export_report.json").read_text())
    dim = report.get("dim")
    if not dim:
        import onnxruntime as ort

        dim = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]) \
            .get_outputs()[0].shape[-1]
    return EncoderExport(folder.resolve(), variant, onnx.resolve(), tok.resolve(), int(dim),
                         int(report.get("max_length", 128)),
                         str(report.get("source_model", folder)))


def native_export(folder: str | Path, requested: str | None, portable: EncoderExport,
                  say: Callable[[str], None] | None = None, kind: str = "gpu") -> EncoderExport:
    """The native flavor's encoder: the requested variant; else on CPU instances the portable
    one (int8_dynamic by default, as the portable flavor runs it); else on GPU instances fp16
    where the export has it — on onnxruntime's CUDA provider int8_dynamic ran 3-10x slower than
    fp16, its quantization steps left on the CPU (docs/benchmarks.md, GPU) — else the portable
    one, with a warning (to `say`; by default this module's logger)."""
    if requested:
        return load_export(folder, requested)
    if kind == "cpu":
        return portable
    if (Path(folder) / VARIANT_FILES["fp16"]).is_file():
        return load_export(folder, "fp16")
    if portable.variant.startswith("int8"):
        (say or log.info)(f"native flavor: {Path(folder).name} has no fp16 variant, so its GPU "
                          f"encoders run {portable.variant}, a CPU format (export --variants "
                          "...,fp16 for GPUs)")
    return portable


# the python models' own imports, in the stock container's Python (it has numpy)
CONTAINER_PACKAGES = ("tokenizers==0.22.2", "faiss-cpu==1.12.0")
HISTORY_CONTAINER_PACKAGES = ("onnxruntime==1.31.1",)  # history_encoder runs its graph itself
TRITON_CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51, as the pip wheel


def container_command(repository: str | Path, kind: str = "gpu", history: bool = False) -> str:
    """The `docker run` line that serves a native repository in the stock NGC container, on a
    GPU node (`--gpus all`) or a CPU-only one."""
    packages = " ".join(CONTAINER_PACKAGES + (HISTORY_CONTAINER_PACKAGES if history else ()))
    gpus = "--gpus all " if kind == "gpu" else ""
    return (f"docker run --rm {gpus}--shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \\\n"
            f"  -v \"{Path(repository).resolve()}:/models\" {TRITON_CONTAINER} \\\n"
            f"  bash -c \"pip install {packages} && tritonserver --model-repository=/models\"")


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _same_item_vectors(trained_with: str, item: EncoderExport) -> bool:
    """Whether the deployed item tower gives the vectors the history tower was trained on: the
    same export, or the fp32 export of the PyTorch model it read (equal to float rounding;
    docs/quality.md: 0.2775 over the deployed table = 0.2775 in-process)."""
    from towerlite.models import resolve_model

    onnx = Path(item.onnx).resolve()
    if Path(trained_with.split(":")[0]).resolve() in (onnx, onnx.parent):
        return True
    if ":" in trained_with or item.variant != "fp32":
        return False
    try:
        return Path(resolve_model(trained_with)).resolve() == \
            Path(item.source_model).resolve()
    except TowerliteError:
        return False


def history_table(folder, prepared, embeddings, item: EncoderExport):
    """(the saved tower, its item table over this catalog): every item by the deployed item
    tower's text embedding through the tower's adapter, plus its ID vector where it has one."""
    from towerlite.sequential import SavedTower

    tower = SavedTower.load(folder)
    trained_with = tower.item_model
    if trained_with and not _same_item_vectors(trained_with, item):
        log.info(f"warning: the history tower was trained on item vectors of {trained_with}; "
                 f"this catalog is embedded by {item.onnx}: its text part reads other vectors "
                 "than it learned")
    table = tower.item_table(prepared["item_id"].tolist(), embeddings)
    log.info(f"history tower ({tower.config.kind}, {tower.width}-d): item table for "
             f"{len(table):,} items")
    return tower, table


HISTORY_WRITTEN = ("item_table.npy", "item_ids.npy", "history.json")
# IVF lists a history-scorer query visits, unless --nprobe says: the fewest of these whose
# recall@10 against exact search, on the tower's own users (check_users), reaches
# HISTORY_RECALL_TARGET. Over the full catalog's 275k-row 64-d table (2,048 lists, SQ8)
# held-out MovieLens users read 0.667 / 0.773 / 0.960 / 0.979 at 32 / 64 / 128 / 256 with a
# 1-epoch tower (128 served), 0.935 / 0.965 / 0.983 / 0.994 with the default 30-epoch one
# (64 served: 0.21 against 0.32 ms a query in-process, and served at concurrency 8 928–1,130
# requests/s against 849–946 at 128; docs/benchmarks.md)
HISTORY_NPROBES = (32, 64, 128, 256)
HISTORY_RECALL_TARGET = 0.95
# --index auto for the history scorer: IVF-Flat where the text scorer gets IVF-SQ8. At the
# tower's width (64-d) the flat lists are small and need no re-scoring: over the full 275k
# catalog, 2,048 lists, nprobe 64, the same recall on the tower's users (0.968) at 0.101
# against 0.224 ms a query (SQ8's 40 candidates re-scored, read row by row from rows.npy), in
# 73 MB of files against SQ8's 20 MB and the 70 MB rows.npy it re-scores from. The fused
# model's execute in-process: 448–475 against 517–543 µs; served, the difference is inside the
# machine's noise (c=1 p50 1.40–1.56 against 1.36–1.75 ms; docs/benchmarks.md, 2026-12-02)
HISTORY_AUTO_KINDS = {"ivf_sq8": "ivf"}


def history_index_kind(index: str, count: int) -> str:
    """The history scorer's index kind for `--index index` over `count` items."""
    kind = ix.choose(index, count)
    return HISTORY_AUTO_KINDS.get(kind, kind) if index == "auto" else kind


# a tower saved without training histories is checked with one-item ones, which understate
# its users' recall (0.791 at 128 where they read 0.983): it is not chosen for, it gets 128
HISTORY_NPROBE_UNCHECKED = 128


def check_users(tower, table: np.ndarray, item_ids: Sequence[str],
                count: int = 200) -> tuple[str, np.ndarray]:
    """The queries a history scorer's index is checked with: the tower's user vectors of the
    training histories saved with it (their items in this catalog), or, for a tower saved
    without them, of histories of one random catalog item. A user vector is not an item row:
    item rows over the MovieLens table read recall 0.932 where users read 1.000; nor is a
    one-item history a trained user: over the full catalog at nprobe 128 those read 0.929
    (1-epoch tower) and 0.791 (30 epochs) where held-out users read 0.960 and 0.983
    (docs/benchmarks.md, the history path over the full catalog)."""
    from towerlite.sequential import onnx_user_vectors

    row_of = {item: r for r, item in enumerate(item_ids)}
    histories = [[row_of[i] for i in h if i in row_of] for h in tower.probes()]
    histories = [h for h in histories if h][:count]
    about = f"{len(histories)} training users' histories saved with the tower"
    if not histories:
        rows = np.random.default_rng(0).choice(len(table), size=min(count, len(table)),
                                               replace=False)
        histories, about = [[int(r)] for r in rows], "the tower's users of one random item"
    return about, onnx_user_vectors(tower.session(), table, histories, tower.config.max_len)


def write_history(scorer: Path, encoder: Path, history, prepared, info: dict,
                  index: str = "exact", nprobe: int | None = None) -> dict:
    """A history release's files: SCORER/catalog/ (the item table as the history_scorer's
    catalog, with an IVF index of kind `index` unless exact: a 275k-item table takes 7.9 ms a
    query to scan at 64-d, docs/benchmarks.md) and ENCODER/history/ (graph, item table, ids),
    where SCORER and ENCODER are the version folders of history_scorer and history_encoder
    (deploy: version 1; release: R). Returns the scorer's catalog.json."""
    tower, table = history
    meta = cat.write_catalog(scorer / "catalog", prepared, table,
                             {**info, "history_tower": str(tower.folder)})
    if index != "exact":
        choose = nprobe is None and bool(tower.probes())
        meta = ix.write_catalog_index(
            scorer / "catalog", table, meta,
            nprobe or (HISTORY_NPROBES if choose else HISTORY_NPROBE_UNCHECKED), index,
            check_users(tower, table, prepared["item_id"]),
            HISTORY_RECALL_TARGET if choose else None)
    folder = encoder / "history"
    folder.mkdir(parents=True, exist_ok=True)
    # the whole tower (graph, adapter, ID vectors, weights: small) travels with the version, so
    # `towerlite catalog update` can give a new item its row from its text embedding alone, and
    # `towerlite fold-in` can continue from the served tower
    for f in tower.folder.iterdir():
        # not the files written below: a tower folder that is a served release's (fold-in's
        # starting point) has them, and a linked one would be written through into that release
        if f.is_file() and f.name not in HISTORY_WRITTEN:
            _place(f, folder / f.name)
    np.save(folder / "item_table.npy", np.ascontiguousarray(table, dtype=np.float32))
    _place(scorer / "catalog" / "item_ids.npy", folder / "item_ids.npy")
    (folder / "history.json").write_text(json.dumps(
        {"count": meta["count"], "dim": meta["dim"], "domains": meta["domains"],
         "max_len": tower.config.max_len, "kind": tower.config.kind,
         "history_tower": str(tower.folder)}, indent=1))
    return meta


def software_versions() -> dict:
    """Python's and the serving packages' versions, recorded by every deploy report and catalog
    version."""
    return package_versions("onnxruntime", "tokenizers", "numpy", "tritonclient",
                            "nvidia-pytriton", "faiss-cpu")


@dataclass(frozen=True)
class DeployRequest:
    """What a deploy writes: `deploy`'s arguments, `towerlite deploy`'s options.

    `items` (an items frame with the loaders' ITEM_COLUMNS) replaces the named `catalog`;
    `limit` keeps the first N items of each named dataset. `index`: exact, ivf (a FAISS
    IVF-Flat index beside the matrix), ivf_sq8 / ivf_pq (compressed, re-scored) or auto (by
    catalog size, `index.choose`). `history_model`: a
    `towerlite history` folder, served as `recommend_history` over the same catalog."""

    user_model: str | Path
    out: str | Path
    item_model: str | Path | None = None
    variant: str = "int8_dynamic"
    item_variant: str | None = None
    native_variant: str | None = None
    catalog: str = "movielens"
    items: pd.DataFrame | None = field(default=None, compare=False)  # a frame has no plain ==
    limit: int | None = None
    flavors: tuple[str, ...] = FLAVORS
    spec: RepositorySpec | None = None
    index: str = "auto"
    nprobe: int | None = None
    threads: int = 2
    workers: int = 1  # processes embedding the catalog (threads split between them)
    history_model: str | Path | None = None
    progress: bool = True

    def __post_init__(self):
        for name in ("threads", "workers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TowerliteError(f"{name} is a whole number of at least 1, not {value!r}")


def deploy(user_model: str | Path, out: str | Path, **settings) -> dict:
    """Write OUT/<flavor>/ for each flavor and OUT/deploy_report.json; returns the report.

    The keyword arguments are DeployRequest's other fields (`run_deploy(DeployRequest(...))`
    does the same)."""
    return run_deploy(DeployRequest(user_model, out, **settings))


def run_deploy(request: DeployRequest) -> dict:
    """The towers, the embedded catalog, the history tower's item table (if any), each flavor's
    repository, the report."""
    t0 = time.perf_counter()
    towers = resolve_towers(request)
    catalog = prepare_catalog(request, towers)
    spec, history = towers.spec, None
    if request.history_model:
        history = history_table(request.history_model, catalog.items, catalog.embeddings,
                                 towers.item)
        spec = replace(spec, history_dim=history[0].width,
                       history_max_len=history[0].config.max_len)
    written, meta, history_meta = write_flavors(request, towers, spec, catalog, history)
    report = _report(towers, spec, catalog, history, written, meta, history_meta, t0)
    out = Path(request.out)
    tmp = out / ".deploy_report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "deploy_report.json")
    return report


@dataclass(frozen=True)
class Towers:
    """The encoders a deploy ships (the portable flavor's, the native flavor's) and the spec
    they fix (dim, max_length, a separate item tokenizer)."""

    user: EncoderExport
    item: EncoderExport
    native_user: EncoderExport
    native_item: EncoderExport
    spec: RepositorySpec

    def of(self, flavor: str) -> tuple[EncoderExport, EncoderExport]:
        """(user, item) encoders of `flavor`."""
        if flavor == "portable":
            return self.user, self.item
        return self.native_user, self.native_item


def resolve_towers(request: DeployRequest) -> Towers:
    """The requested exports, checked: known flavors, both towers in one embedding space."""
    for flavor in request.flavors:
        if flavor not in FLAVORS:
            raise TowerliteError(f"unknown flavor {flavor!r}; choose from {', '.join(FLAVORS)}")
    item_model = request.item_model or request.user_model
    user = load_export(request.user_model, request.variant)
    item = load_export(item_model, request.item_variant or request.variant)
    native, kind = "native" in request.flavors, (request.spec or RepositorySpec()).native_kind
    native_user = native_export(request.user_model, request.native_variant, user, kind=kind) \
        if native else user
    native_item = native_export(item_model, request.native_variant, item, kind=kind) \
        if native else item
    if user.dim != item.dim:
        raise TowerliteError(f"the user tower is {user.dim}-d and the item tower {item.dim}-d: "
                             "they must share one embedding space (distill the student into the "
                             "teacher's space, with its projection head)")
    same_tokenizer = cat.sha256_file(user.tokenizer_json) == cat.sha256_file(item.tokenizer_json)
    spec = replace(request.spec or RepositorySpec(), dim=user.dim, max_length=user.max_length,
                   item_tokenizer=not same_tokenizer)
    return Towers(user, item, native_user, native_item, spec)


@dataclass(frozen=True, eq=False)
class EmbeddedCatalog:
    """The catalog a deploy serves: its items rendered and in scorer order, their embeddings by
    the item tower, and what catalog.json and the report record about them."""

    items: pd.DataFrame
    embeddings: np.ndarray
    info: dict              # catalog.json's record: the item model, the text, the source
    source: dict
    cache: Path
    cache_hit: bool
    prepare_seconds: float
    embed_seconds: float


def embed_items(prepared, item: EncoderExport, max_length: int, threads: int = 2,
                workers: int = 1, progress: bool = True) -> tuple[np.ndarray, Path, bool]:
    """(the prepared items' embeddings by `item`, the cache folder, whether it was a cache hit):
    cached per model and texts, resumable (serving.catalog.embed_catalog); deploy's and a
    release's new item tower's."""
    from towerlite.runtime import OnnxEncoder

    encoder = OnnxEncoder(item.onnx, item.tokenizer_json, max_length=max_length, threads=threads,
                          providers=cat.embedding_providers())
    used = encoder.session.get_providers()[0]
    on_gpu = used == "CUDAExecutionProvider"  # one process owns the GPU: no worker processes
    texts = prepared["text"].tolist()
    # the cache key is the model file and the texts, not the provider: GPU and CPU vectors of
    # one model agree to rounding (fp16 students excepted: their file differs)
    cache = cat.cache_dir_for(cat.sha256_file(item.onnx), texts, max_length)
    cached = (cache / "embeddings.npy").is_file()
    t0 = time.perf_counter()
    embeddings = cat.embed_catalog(texts, encoder, cache_dir=cache, progress=progress,
                                   workers=1 if on_gpu else workers,
                                   batch_size=256 if on_gpu else 64)
    log.info(f"catalog embeddings: {'cache hit' if cached else f'{time.perf_counter() - t0:.1f} s'}"
             f" on {used} ({cache})")
    return embeddings, cache, cached


def prepare_catalog(request: DeployRequest, towers: Towers) -> EmbeddedCatalog:
    """The catalog: rendered, embedded with the item tower (cached per model), ordered for the
    scorer."""
    item, spec = towers.item, towers.spec
    t_items = time.perf_counter()
    if request.items is not None:
        prepared = prepare_items(request.items)
        source = {"catalog": "given items frame", "rows": int(len(request.items))}
    else:
        names = cat.catalog_names(request.catalog)
        prepared = cat.catalog_items(names, request.limit)
        source = {"catalog": request.catalog, "datasets": list(names), "limit": request.limit}
    counts = prepared["domain"].value_counts(sort=False).items()
    log.info(f"catalog: {len(prepared):,} items "
             f"({', '.join(f'{d}: {n:,}' for d, n in counts)})")
    t_embed = time.perf_counter()
    embeddings, cache, cached = embed_items(prepared, item, spec.max_length, request.threads,
                                            request.workers, request.progress)
    embed_s = time.perf_counter() - t_embed
    info = {"item_model": item.describe(), "max_length": spec.max_length,
            "text": "towerlite.data.render.item_text", "source": source}
    return EmbeddedCatalog(prepared, embeddings, info, source, cache, cached,
                           t_embed - t_items, embed_s)


def write_flavors(request: DeployRequest, towers: Towers, spec: RepositorySpec,
                  catalog: EmbeddedCatalog, history) -> tuple[dict, dict, dict | None]:
    """OUT/<flavor>/ for each flavor, built in OUT/.FLAVOR.staging, validated, then renamed
    into place. The first flavor's catalog and history files are written (with their indexes),
    the others link them. Returns ({flavor: folder}, the catalog's catalog.json, the history
    scorer's catalog.json or None)."""
    out = Path(request.out)
    out.mkdir(parents=True, exist_ok=True)
    first = None  # the first flavor's folder, whose data files the others link
    written, history_meta = {}, None
    shared = [("scorer", "catalog")] + \
        ([("history_scorer", "catalog"), ("history_encoder", "history")] if history else [])
    for flavor in request.flavors:
        staging = out / f".{flavor}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        _write_models(staging, flavor, towers, spec)
        if first is None:
            meta = _write_catalog(staging / "scorer" / "1" / "catalog", catalog, request.index,
                                  request.nprobe)
            if history is not None:
                history_meta = write_history(
                    staging / "history_scorer" / "1", staging / "history_encoder" / "1",
                    history, catalog.items, catalog.info,
                    history_index_kind(request.index, len(catalog.items)), request.nprobe)
        else:
            for model, folder in shared:
                for f in (first / model / "1" / folder).iterdir():
                    _place(f, staging / model / "1" / folder / f.name)
        validate_repository(staging)
        final = replace_dir(staging, out / flavor)
        first = first or final
        written[flavor] = str(final)
        log.info(f"wrote {final}")
    return written, meta, history_meta


def _write_models(staging: Path, flavor: str, towers: Towers, spec: RepositorySpec) -> None:
    """A flavor's configs and model code, its tokenizer(s) and its encoders' weights."""
    write_code(staging, spec, flavor)
    _place(towers.user.tokenizer_json, staging / "tokenizer" / "1" / "tokenizer.json")
    if spec.item_tokenizer:
        _place(towers.item.tokenizer_json, staging / "item_tokenizer" / "1" / "tokenizer.json")
    user, item = towers.of(flavor)
    _place(user.onnx, staging / "user_encoder" / "1" / "model.onnx")
    _place(item.onnx, staging / "item_encoder" / "1" / "model.onnx")


def _write_catalog(folder: Path, catalog: EmbeddedCatalog, index: str,
                   nprobe: int | None) -> dict:
    """scorer/1/catalog/, with an IVF index where `index` chooses one; returns catalog.json."""
    meta = cat.write_catalog(folder, catalog.items, catalog.embeddings, catalog.info)
    kind = ix.choose(index, len(catalog.items))
    if kind != "exact":
        meta = ix.write_catalog_index(folder, catalog.embeddings, meta,
                                      nprobe or ix.DEFAULT_NPROBE, kind)
    return meta


def _report(towers: Towers, spec: RepositorySpec, catalog: EmbeddedCatalog, history,
            written: dict, meta: dict, history_meta: dict | None, t0: float) -> dict:
    """deploy_report.json: inputs, settings, catalog counts, timings, versions."""
    return {
        "repositories": written,
        "user_tower": towers.user.describe(), "item_tower": towers.item.describe(),
        "native_encoders": {"user": towers.native_user.variant,
                            "item": towers.native_item.variant},
        "separate_item_tokenizer": spec.item_tokenizer,
        "catalog": {**catalog.source, "count": meta["count"], "dim": meta["dim"],
                    "domains": meta["domains"], "embedding_cache": str(catalog.cache),
                    "cache_hit": catalog.cache_hit,
                    "embed_seconds": round(catalog.embed_seconds, 2),
                    "index": meta.get("index") or {"kind": "exact"},
                    "prepare_seconds": round(catalog.prepare_seconds, 2)},
        "history_tower": None if history is None else {
            "folder": str(history[0].folder), "kind": history[0].config.kind,
            "dim": history[0].width, "max_len": history[0].config.max_len,
            "trained_with_item_model": history[0].item_model,
            "index": history_meta.get("index") or {"kind": "exact"}},
        "spec": spec.to_json(), "versions": software_versions(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
