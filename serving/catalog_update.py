"""`towerlite catalog update`: new, changed or removed items → the scorer's next version,
loaded on a running server through Triton's repository API, without a redeploy.

    report = update("runs/repo/portable", "new_items.csv", remove="gone.txt",
                    url="127.0.0.1:8001")

1. Read the newest scorer version's catalog (REPO/scorer/N/catalog, `catalog.read_catalog`).
2. Render the file's items with `towerlite.data.render.item_text` (through
   `towerlite.data.catalog.prepare_items`) and encode only those, with the item tower that encoded the
   catalog: the ONNX file whose sha256 catalog.json records (REPO/item_encoder/1/model.onnx, or
   the export deploy read) and the item tokenizer of the repository.
3. Merge: an id in the file replaces that item, a new id is added, `remove` drops ids. The
   merged catalog keeps the scorer's order (domain-contiguous, ids sorted as UTF-8 bytes).
4. Write version N+1: built in REPO/scorer/.staging-(N+1) (Triton ignores a non-numeric version
   folder), its model.py copied from version N, the IVF index rebuilt when version N has one
   (`--index keep`), read back, then renamed into place. Version N stays on disk.
5. With `url`: `load_model("scorer")`. Triton keeps answering with version N until N+1 is ready,
   then unloads N (version_policy latest 1; the ensembles ask for version -1), so requests in
   flight and during the swap succeed. The served catalog is then checked (the new version is
   ready; `EXCLUDE` of added ids is accepted and of removed ids refused, which only a scorer
   holding the new catalog does), and versions older than N are deleted.

Loading is a separate step from writing: if the server is down or refuses, version N+1 stays
complete on disk, the server (if up) keeps serving N, and `towerlite catalog load` retries (a
restarted server serves the newest version anyway).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from towerlite.data.catalog import prepare_items, scorer_order
from towerlite.errors import TowerliteError

from . import catalog as cat
from . import history_update as history
from . import index as ix
from .repository import FUSED, HISTORY_FUSED

ITEM_COLUMNS = ("item_id", "domain", "title", "year", "genres", "author", "publisher")
REQUIRED_COLUMNS = ("item_id", "domain", "title")
INDEX_CHOICES = ("keep", *ix.INDEX_KINDS)
CHECK_IDS = 100          # ids of each kind recorded in catalog.json and checked on the server
EXCLUDE_CHUNK = 1000     # ids per check request
LOAD_TIMEOUT_S = 600.0   # a large catalog with an IVF index loads in tens of seconds


# ---------------------------------------------------------------------------------------------
# inputs

def read_items(path: str | Path) -> pd.DataFrame:
    """The items of a CSV or JSON Lines file as an ITEM_COLUMNS frame, checked row by row."""
    path = Path(path)
    if not path.is_file():
        raise TowerliteError(f"{path}: no such items file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows, lines = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows, lines = _read_jsonl(path)
    else:
        raise TowerliteError(f"{path}: items must be CSV (.csv) or JSON Lines (.jsonl), one item "
                             f"a row with the columns {', '.join(ITEM_COLUMNS)}")
    return _check_items(path, rows, lines)


def _read_csv(path: Path) -> tuple[pd.DataFrame, list[int]]:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise TowerliteError(f"{path}: not a readable UTF-8 CSV file "
                             f"({' '.join(str(exc).split())})") from None
    return frame, [i + 2 for i in range(len(frame))]  # line numbers after the header


def _read_jsonl(path: Path) -> tuple[pd.DataFrame, list[int]]:
    records, lines = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TowerliteError(f"{path}: not UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TowerliteError(f"{path}, line {number}: not JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TowerliteError(f"{path}, line {number}: each line must be one JSON object")
        records.append(record)
        lines.append(number)
    columns = list(dict.fromkeys(k for r in records for k in r))
    return pd.DataFrame.from_records(records, columns=columns), lines


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, list):  # JSON genres as a list: the loaders join them with "|"
        return "|".join(str(v).strip() for v in value)
    return str(value).strip()


def _check_items(path: Path, rows: pd.DataFrame, lines: list[int]) -> pd.DataFrame:
    """Columns known and present, ids unique and non-empty, years whole numbers, every row
    renderable by item_text (its domain is one the towers know)."""
    from towerlite.data.render import item_text

    unknown = [c for c in rows.columns if c not in ITEM_COLUMNS]
    if unknown:
        raise TowerliteError(f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; the "
                             f"item columns are {', '.join(ITEM_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise TowerliteError(f"{path}: missing column(s) {', '.join(missing)} (required: "
                             f"{', '.join(REQUIRED_COLUMNS)}; optional: year, genres, author, "
                             "publisher)")
    out = []
    for line, record in zip(lines, rows.to_dict("records")):
        item = {c: _cell(record.get(c)) for c in ITEM_COLUMNS}
        where = f"{path}, line {line}"
        if not item["item_id"]:
            raise TowerliteError(f"{where}: item_id is empty")
        if not item["title"]:
            raise TowerliteError(f"{where} ({item['item_id']!r}): title is empty")
        try:
            item["year"] = int(float(item["year"])) if item["year"] else 0
        except (ValueError, OverflowError):
            raise TowerliteError(f"{where} ({item['item_id']!r}): year {item['year']!r} is not "
                                 "a whole number") from None
        try:
            item_text(item)
        except ValueError as exc:
            raise TowerliteError(f"{where} ({item['item_id']!r}): {exc}") from None
        out.append(item)
    frame = pd.DataFrame(out, columns=list(ITEM_COLUMNS))
    dupes = frame["item_id"][frame["item_id"].duplicated()].unique().tolist()
    if dupes:
        raise TowerliteError(f"{path}: item id(s) given more than once: {_show(dupes)}")
    return frame


def read_ids(path: str | Path) -> list[str]:
    """Item ids to remove: one a line, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise TowerliteError(f"{path}: no such file of item ids to remove")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TowerliteError(f"{path}: not UTF-8 text") from None
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def _show(values: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(map(repr, list(values)[:limit]))
    return shown + (f" … ({len(values):,} in all)" if len(values) > limit else "")


# ---------------------------------------------------------------------------------------------
# the repository

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


# ---------------------------------------------------------------------------------------------
# merging

def _row_domains(meta: dict, count: int) -> np.ndarray:
    domains = np.empty(count, dtype=object)
    for d in meta["domains"]:
        domains[d["start"]:d["stop"]] = d["name"]
    return domains


def merge(old_ids: np.ndarray, old_domains: np.ndarray, old_matrix_t: np.ndarray,
          new: pd.DataFrame, new_emb: np.ndarray, removed: set[str],
          domain_order: Sequence[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """(item_id + domain frame, (dim, n) matrix) of the catalog after the update: old rows not
    replaced or removed, plus `new` (prepared items with their embeddings), in scorer order."""
    replaced = set(new["item_id"])
    keep = np.array([i not in replaced and i not in removed for i in old_ids], dtype=bool)
    old_rows = np.flatnonzero(keep)
    frame = pd.concat([
        pd.DataFrame({"item_id": old_ids[keep], "domain": old_domains[keep], "_src": old_rows}),
        pd.DataFrame({"item_id": new["item_id"].to_numpy(), "domain": new["domain"].to_numpy(),
                      "_src": -1 - np.arange(len(new))}),  # negative: a row of new_emb
    ], ignore_index=True)
    frame = scorer_order(frame, domain_order)
    if frame.empty:
        raise TowerliteError("the update would leave the catalog empty")
    src = frame.pop("_src").to_numpy()
    matrix_t = np.empty((old_matrix_t.shape[0], len(frame)), dtype=np.float32)
    from_old = src >= 0
    # gather the kept columns of the memory-mapped (dim, n) matrix a block of rows at a time:
    # a few MB in flight instead of a second copy of a large catalog
    old_cols = src[from_old]
    for r in range(0, matrix_t.shape[0], 32):
        matrix_t[r:r + 32, from_old] = old_matrix_t[r:r + 32][:, old_cols]
    matrix_t[:, ~from_old] = new_emb[-1 - src[~from_old]].T
    return frame, matrix_t


# ---------------------------------------------------------------------------------------------
# writing the next version

def write_version(repo: Path, base: int, frame: pd.DataFrame, matrix_t: np.ndarray, info: dict,
                  index_kind: str, nprobe: int, log) -> tuple[Path, dict]:
    """REPO/scorer/<base+1>/ built beside the others under a name Triton ignores, read back,
    then renamed into place: a reader (or a crash) sees the whole version or none of it."""
    from .deploy import _write_index

    scorer = repo / "scorer"
    version = base + 1
    staging = scorer / f".staging-{version}"
    final = scorer / str(version)
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _copy_version_code(scorer / str(base), staging)
        folder = staging / "catalog"
        embeddings = matrix_t.T  # a view; write_catalog stores it transposed again, no copy
        meta = cat.write_catalog(folder, frame, embeddings, info)
        if index_kind == "ivf":
            meta = _write_index(folder, embeddings, meta, nprobe, log)
        _read_back(folder, frame, matrix_t)
        try:
            staging.rename(final)
        except OSError:
            raise TowerliteError(f"{final} appeared while this update ran (another update?); "
                                 "run it again") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final, meta


def _copy_version_code(previous: Path, staging: Path) -> None:
    """Everything of the previous version but its catalog (model.py: the code that runs with
    the unchanged config.pbtxt)."""
    staging.mkdir(parents=True)
    for entry in previous.iterdir():
        if entry.name in ("catalog", "__pycache__"):  # the stub's bytecode is its own
            continue
        if entry.is_dir():
            shutil.copytree(entry, staging / entry.name)
        else:
            shutil.copy2(entry, staging / entry.name)
    if not (staging / "model.py").is_file():
        raise TowerliteError(f"{previous} has no model.py to carry into the next version")


def _read_back(folder: Path, frame: pd.DataFrame, matrix_t: np.ndarray) -> None:
    emb, ids, meta = cat.read_catalog(folder)
    if meta["count"] != len(frame) or list(ids) != frame["item_id"].tolist() \
            or not np.array_equal(np.asarray(emb.T), matrix_t):
        raise TowerliteError(f"{folder}: the written catalog does not read back as written "
                             "(disk full?); nothing was renamed into place")


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


# ---------------------------------------------------------------------------------------------
# loading on a running server

class LoadError(TowerliteError):
    """The version is written but the server did not (yet) load it. `next_step`: retry (the
    server could not be reached), restart (it does not allow loading), rejected (it tried and
    failed: it keeps serving the previous version), elsewhere (it serves another repository),
    log (something else: the server's log says)."""

    def __init__(self, message: str, next_step: str = "rejected"):
        super().__init__(message)
        self.next_step = next_step


def _unreachable(message: str) -> bool:
    low = message.lower()
    return any(s in low for s in ("failed to connect", "connection refused", "deadline exceeded",
                                  "name resolution", "socket closed", "broken pipe",
                                  "connect failed", "errno 111"))


def _server_client(url: str, protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as tc

        return tc.InferenceServerClient(url)
    if protocol == "http":
        import tritonclient.http as tc

        return tc.InferenceServerClient(url, connection_timeout=30.0,
                                        network_timeout=LOAD_TIMEOUT_S)
    raise TowerliteError(f"unknown protocol {protocol!r}; choose grpc or http")


def _load_error(url: str, protocol: str, exc: BaseException) -> LoadError:
    message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
    message = " ".join(str(message or exc).split())
    if _unreachable(message):
        return LoadError(f"cannot reach Triton at {protocol}://{url} ({message}); is the server "
                         "running?", "retry")
    if "explicit model load / unload is not allowed" in message:
        return LoadError(f"the server at {url} does not allow loading models (it was started "
                         "without --model-control-mode=explicit; `towerlite serve` starts it "
                         "with, unless --model-control none)", "restart")
    return LoadError(f"the server tried and refused it, and keeps serving the previous version: "
                     f"{message}", "rejected")


def load_on_server(url: str, protocol: str, version: int, present: Sequence[str] = (),
                   absent: Sequence[str] = ()) -> dict:
    """load_model("scorer") and check the server now serves `version`: it is ready, the ensemble
    is ready, `present` ids are in its catalog and `absent` ids are not. Raises LoadError."""
    from tritonclient.utils import InferenceServerException

    client = _server_client(url, protocol)
    t0 = time.perf_counter()
    try:
        _load_model(client, protocol, "scorer")
        ready = client.is_model_ready("scorer", str(version))
        served = client.get_model_metadata("scorer")
        served = served.versions if protocol == "grpc" else served.get("versions", [])
        ensemble = client.is_model_ready("recommend")
        # recommend_fused reads the scorer's newest catalog when it loads: reload it too (Triton
        # keeps the loaded one answering until the reloaded one is ready)
        repo_models = {m["name"] if isinstance(m, dict) else m.name
                       for m in _repository_index(client, protocol)}
        fused = FUSED in repo_models
        if fused:
            _reload_fused(client, protocol, FUSED, "SCORER_VERSION", version)
            ensemble = ensemble and client.is_model_ready(FUSED)
        if set(history.MODELS) <= repo_models:
            ensemble = ensemble and history.load(client, protocol, _load_model, version)
            if HISTORY_FUSED in repo_models:
                _reload_fused(client, protocol, HISTORY_FUSED, "HISTORY_VERSION", version)
                ensemble = ensemble and client.is_model_ready(HISTORY_FUSED)
        load_s = time.perf_counter() - t0
    except (InferenceServerException, OSError) as exc:
        raise _load_error(url, protocol, exc) from None
    finally:
        client.close()
    if not ready:
        raise LoadError(f"the server at {url} loaded the scorer but serves version(s) "
                        f"{', '.join(served) or 'none'}, not {version}", "elsewhere")
    if not ensemble:
        raise LoadError(f"the server at {url} serves scorer version {version} but "
                        f"`recommend`{' or ' + FUSED if fused else ''} is not ready", "log")
    for model in ("recommend", FUSED) if fused else ("recommend",):
        _check_catalog(url, protocol, present, absent, model)
    return {"url": url, "protocol": protocol, "load_seconds": round(load_s, 2),
            "served_versions": [str(v) for v in served], "checked_present": len(present),
            "checked_absent": len(absent)}


def _reload_fused(client, protocol: str, name: str, parameter: str, version: int) -> None:
    """Reload a fused model (fused.py) at catalog `version`: it reads its steps' newest version
    when it loads, and its own files are unchanged, so Triton reloads it only for a changed
    config: the parameter naming the version. The loaded one answers until the new one is ready."""
    config = client.get_model_config(name, **({"as_json": True} if protocol == "grpc" else {}))
    config = config.get("config", config)
    config.setdefault("parameters", {})[parameter] = {"string_value": str(version)}
    _load_model(client, protocol, name, json.dumps(config))


def _load_model(client, protocol: str, name: str, config: str | None = None) -> None:
    if protocol == "grpc":
        client.load_model(name, config=config, client_timeout=LOAD_TIMEOUT_S)
    else:
        client.load_model(name, config=config)


def _repository_index(client, protocol: str) -> list:
    index = client.get_model_repository_index()
    return list(index.models) if protocol == "grpc" else index


def _check_catalog(url: str, protocol: str, present: Sequence[str], absent: Sequence[str],
                   model: str = "recommend"):
    """The scorer refuses EXCLUDE ids it does not hold, naming how many: so `present` must be
    accepted and `absent` refused in full, by the catalog now served."""
    from .client import Client, ServingError

    with Client(url, protocol, timeout_s=60, model=model) as client:
        try:
            for start in range(0, len(present), EXCLUDE_CHUNK):
                client.recommend("catalog check", k=1,
                                 exclude=list(present[start:start + EXCLUDE_CHUNK]))
        except ServingError as exc:
            raise LoadError(f"the served catalog lacks items this update added: {exc}",
                            "elsewhere") from None
        for start in range(0, len(absent), EXCLUDE_CHUNK):
            chunk = list(absent[start:start + EXCLUDE_CHUNK])
            try:
                client.recommend("catalog check", k=1, exclude=chunk)
                refused = ""
            except ServingError as exc:
                refused = str(exc)
            if f"{len(chunk)} EXCLUDE id(s) not in the catalog" not in refused:
                raise LoadError("the served catalog still holds items this update removed"
                                + (f" ({refused})" if refused else ""), "elsewhere")


# ---------------------------------------------------------------------------------------------
# the command

def _inputs(items, remove) -> tuple[pd.DataFrame, list[str], dict]:
    source = {}
    if items is None:
        frame = pd.DataFrame(columns=list(ITEM_COLUMNS))
    elif isinstance(items, pd.DataFrame):
        frame = _check_items(Path("items frame"), items, [i + 1 for i in range(len(items))])
        source["items"] = f"a frame of {len(items)} rows"
    else:
        frame = read_items(items)
        source["items"] = str(Path(items).resolve())
        source["items_sha256"] = cat.sha256_file(Path(items))
    if remove is None:
        removed = []
    elif isinstance(remove, (str, Path)):
        removed = read_ids(remove)
        source["remove"] = str(Path(remove).resolve())
    else:
        removed = list(dict.fromkeys(str(r) for r in remove))
    if frame.empty and not removed:
        raise TowerliteError("nothing to update: give items (new or changed) and/or ids to remove")
    both = sorted(set(frame["item_id"]) & set(removed))
    if both:
        raise TowerliteError(f"id(s) both given as items and to remove: {_show(both)}")
    return frame, removed, source


def update(repository: str | Path, items: str | Path | pd.DataFrame | None = None,
           remove: str | Path | Sequence[str] | None = None, *, url: str | None = None,
           protocol: str = "grpc", index: str = "keep", nprobe: int | None = None,
           threads: int = 2, keep_versions: int = 2, progress: bool = True, log=print) -> dict:
    """Write the scorer's next catalog version and, with `url`, load it on that server.

    `items`: a CSV/JSONL file (or an ITEM_COLUMNS frame); an existing id replaces that item, a
    new one is added. `remove`: a file of ids (one a line) or a list. `index`: keep (what the
    current version has, rebuilt), exact, ivf or auto (ivf from 100k items). After a successful
    load, the newest `keep_versions` versions stay on disk. Returns the update's record."""
    from towerlite.runtime import OnnxEncoder

    from .deploy import _versions

    t0 = time.perf_counter()
    if index not in INDEX_CHOICES:
        raise TowerliteError(f"unknown index {index!r}; choose from {', '.join(INDEX_CHOICES)}")
    if keep_versions < 1:
        raise TowerliteError("keep_versions must be at least 1 (the version just loaded)")
    repo = flavor_folder(repository)
    base = newest_version(repo)
    frame, removed, source = _inputs(items, remove)
    old_emb, old_ids, old_meta = cat.read_catalog(repo / "scorer" / str(base) / "catalog")
    known = set(old_ids.tolist())
    unknown = [i for i in removed if i not in known]
    if unknown:
        raise TowerliteError(f"{len(unknown)} id(s) to remove are not in the catalog (version "
                             f"{base}): {_show(unknown)}")

    # encode only the given items, with the catalog's own item tower, in deploy's batches
    t_encode = time.perf_counter()
    domain_order = list(dict.fromkeys([d["name"] for d in old_meta["domains"]]
                                      + frame["domain"].tolist()))
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
    encode_s = time.perf_counter() - t_encode

    merged, matrix_t = merge(old_ids, _row_domains(old_meta, len(old_ids)), old_emb.T, new,
                             new_emb, set(removed), domain_order)
    added = [i for i in new["item_id"] if i not in known]
    changed = [i for i in new["item_id"] if i in known]
    kind = ("ivf" if old_meta.get("index") else "exact") if index == "keep" \
        else ix.choose(index, len(merged))
    record = {
        "version": base + 1, "from_version": base,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **source,
        "added": len(added), "changed": len(changed), "removed": len(removed),
        "count_before": len(old_ids), "count": len(merged), "encoded": len(new),
        "encode_seconds": round(encode_s, 2), "index": kind,
        # a few ids of each kind, so `towerlite catalog load` can check a retried load
        "check": {"present": (added + changed)[:CHECK_IDS], "absent": removed[:CHECK_IDS]},
        "versions": _versions(),
    }
    info = {k: v for k, v in old_meta.items() if k not in ("count", "dim", "domains", "index")}
    info["updates"] = [*old_meta.get("updates", []), record]

    t_write = time.perf_counter()
    folder, meta = write_version(repo, base, merged, matrix_t, info, kind,
                                 nprobe or (old_meta.get("index") or {}).get("nprobe")
                                 or ix.DEFAULT_NPROBE, log)
    record = {**record, "path": str(folder), "domains": meta["domains"],
              "write_seconds": round(time.perf_counter() - t_write, 2)}
    log(f"wrote scorer version {base + 1}: {len(merged):,} items (+{len(added)} added, "
        f"{len(changed)} changed, -{len(removed)} removed; {len(new)} encoded in "
        f"{encode_s:.1f} s) at {folder}")
    if history.deployed(repo):
        record["history"] = history.write_versions(repo, base + 1, new, new_emb, set(removed),
                                                   domain_order, log)
    if url:
        record["load"] = load_version(repo, url, protocol, version=base + 1,
                                      keep_versions=keep_versions, log=log)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def load_version(repository: str | Path, url: str, protocol: str = "grpc",
                 version: int | None = None, keep_versions: int = 2, log=print) -> dict:
    """Load the newest written scorer version on the server at `url` and check it is served
    (also the retry after a failed load); then prune versions older than `keep_versions`."""
    repo = flavor_folder(repository)
    version = version or newest_version(repo)
    meta = json.loads((repo / "scorer" / str(version) / "catalog" / "catalog.json").read_text())
    check = ((meta.get("updates") or [{}])[-1]).get("check") or {}
    if ((meta.get("updates") or [{}])[-1]).get("version") != version:
        check = {}  # a deploy's version 1: nothing recorded to check beyond readiness
    try:
        loaded = load_on_server(url, protocol, version, check.get("present", ()),
                                check.get("absent", ()))
    except LoadError as exc:
        folder = repo / "scorer" / str(version)
        then = {
            "retry": "loading is a separate step: retry it with `towerlite catalog load "
                     f"--repository {repo} --url {url}` once the server runs (a server started "
                     "later serves the newest version anyway)",
            "restart": "restart the server to serve it (it loads the newest version)",
            "rejected": f"remove {folder}, or a restart will try it again and fail",
            "elsewhere": f"is {url} the server of {repo}? (a server started on it serves the "
                         "newest version)",
            "log": "the server's log says more",
        }[exc.next_step]
        raise LoadError(f"scorer version {version} is written completely ({folder}) but was not "
                        f"loaded: {exc}. Nothing is half-written; {then}",
                        exc.next_step) from None
    loaded["pruned"] = prune(repo, keep_versions)
    log(f"loaded scorer version {version} on {url} in {loaded['load_seconds']} s (checked "
        f"{loaded['checked_present']} added/changed and {loaded['checked_absent']} removed ids)"
        + (f"; deleted old version(s) {', '.join(map(str, loaded['pruned']))}"
           if loaded["pruned"] else ""))
    return loaded
