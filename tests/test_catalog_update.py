"""`towerlite catalog update`: new, changed and removed items become the scorer's next version,
loaded on a REAL Triton server (2.51 from nvidia-pytriton, model control explicit) through its
repository API while requests keep coming; none may fail. Real all-MiniLM-L6-v2 export (fp32 for
both towers, so an item's own text finds it with a score of 1), the first 300 MovieLens movies,
new items from Book-Crossing."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from towerlite.data.catalog import prepare_items
from towerlite.errors import TowerliteError
from towerlite.serving import catalog as cat
from towerlite.serving.catalog_update import (
    ITEM_COLUMNS,
    LoadError,
    scorer_versions,
    update,
)
from towerlite.serving.client import Client, ServingError

pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__:DeprecationWarning")

N_MOVIES, N_BOOKS = 300, 20
CHANGED = 5                 # the movie at this position of the slice gets a new title
REMOVED = (10, 11, 12)      # the movies at these positions are removed
NEW_TITLE = {"title": "Bread, Salt and Time", "year": 2024, "genres": "Documentary"}


@pytest.fixture(scope="module")
def data(cache):
    from towerlite.data import load_bookcrossing, load_movielens

    movies = load_movielens().items.head(N_MOVIES).reset_index(drop=True)
    books = load_bookcrossing().items.head(N_BOOKS).reset_index(drop=True)
    return movies, books


@pytest.fixture(scope="module")
def pristine(exported, data, tmp_path_factory):
    """A deploy of the 300 movies (portable only), never modified: tests copy it."""
    from towerlite.serving.deploy import deploy

    movies, _ = data
    out = tmp_path_factory.mktemp("catalog-update-repo")
    deploy(exported, out, variant="fp32", items=movies, flavors=("portable",), progress=False)
    return out / "portable"


def copy_repo(src: Path, dst: Path) -> Path:
    # hard links: an update only ever writes new files and renames folders
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


@pytest.fixture
def repo(pristine, tmp_path):
    return copy_repo(pristine, tmp_path / "portable")


def changes(data, folder: Path) -> tuple[Path, Path, object]:
    """items.csv (20 new books + one changed movie), remove.txt (3 movies), the final items."""
    import pandas as pd

    movies, books = data
    changed = movies.iloc[[CHANGED]].assign(**NEW_TITLE)
    items = pd.concat([books, changed], ignore_index=True)[list(ITEM_COLUMNS)]
    items.to_csv(folder / "items.csv", index=False)
    removed = movies["item_id"].iloc[list(REMOVED)].tolist()
    (folder / "remove.txt").write_text("\n".join(removed) + "\n")
    final = pd.concat([movies.drop(index=[CHANGED, *REMOVED]), changed, books], ignore_index=True)
    return folder / "items.csv", folder / "remove.txt", final


def text_of(row) -> str:
    from towerlite.data.render import item_text

    return item_text(row)


# ---------------------------------------------------------------------------------------------
# the swap under load, on a real server

@pytest.fixture(scope="module")
def served(pristine, tmp_path_factory):
    from towerlite.serving.triton import start_server

    folder = tmp_path_factory.mktemp("catalog-update-served")
    repo = copy_repo(pristine, folder / "portable")
    with start_server(repo, log_path=folder / "tritonserver.log") as server:
        yield repo, server


class Traffic:
    """Threads sending `recommend` until stopped, over gRPC and HTTP, to the ensemble and to
    `recommend_fused` (reloaded after the scorer); every outcome is kept."""

    TEXTS = ["[movie] Heat (1995). Action|Crime|Thriller; [movie] Casino (1995). Drama|Thriller",
             "[book] Clara Callan by Richard Bruce Wright (2001). HarperFlamingo Canada",
             "funny animated films for children"]

    def __init__(self, server, keep_id: str, threads: int = 6):
        self.server, self.keep_id = server, keep_id
        self.stop = threading.Event()
        self.done: list[float] = []      # finish times of successful requests
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        protocol = "grpc" if i % 2 == 0 else "http"
        url = self.server.grpc_url if protocol == "grpc" else self.server.http_url
        model = "recommend_fused" if i >= 4 else "recommend"
        with Client(url, protocol, model=model) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                try:
                    # an exclusion of an item the update keeps, and a domain filter, so the
                    # swap is exercised on the scorer's lookups too
                    got = client.recommend(self.TEXTS[n % 3], k=10,
                                           exclude=[self.keep_id] if n % 2 else None,
                                           domain="movie" if n % 4 == 0 else None)
                    assert len(got) == 10, got
                    self.done.append(time.monotonic())
                except Exception as exc:  # noqa: BLE001  (every failure counts)
                    self.failed.append(f"{protocol} {model}: {exc}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def between(self, start: float, stop: float) -> int:
        return sum(start <= t <= stop for t in self.done)


def test_update_under_concurrent_requests_loses_none(served, data, exported, tmp_path):
    from towerlite.runtime import OnnxEncoder

    repo, server = served
    items_csv, remove_txt, final = changes(data, tmp_path)
    movies, books = data
    changed_id = movies["item_id"][CHANGED]
    removed = movies["item_id"].iloc[list(REMOVED)].tolist()
    v1 = repo / "scorer" / "1" / "catalog"
    old_emb, old_ids, _ = cat.read_catalog(v1)
    old_row = np.asarray(old_emb[list(old_ids).index(changed_id)])
    with Client(server.grpc_url) as c:
        first_book = text_of(books.iloc[0])
        assert books["item_id"][0] not in c.recommend(first_book, k=10).item_ids

    with Traffic(server, keep_id=movies["item_id"][0]) as traffic:
        while len(traffic.done) < 8 and not traffic.failed:  # every thread under way
            time.sleep(0.05)
        start = time.monotonic()
        report = update(repo, items_csv, remove_txt, url=server.grpc_url, progress=False)
        stop = time.monotonic()
        during = traffic.between(start, stop)
        time.sleep(1.0)  # and afterwards, on the new version
    print(f"\ncatalog update: {report['encoded']} items encoded, {report['seconds']} s in all "
          f"(load {report['load']['load_seconds']} s); {during} requests during it, "
          f"{len(traffic.done)} in all, {len(traffic.failed)} failed")
    assert traffic.failed == []
    assert during >= 5, "requests must be in flight while the scorer is swapped"
    assert traffic.between(stop, stop + 60) > 0

    # what was written: version 2 beside version 1, counts and ranges right, in scorer order
    assert scorer_versions(repo) == [1, 2]
    assert not list((repo / "scorer").glob(".staging-*"))
    meta = json.loads((repo / "scorer" / "2" / "catalog" / "catalog.json").read_text())
    count = N_MOVIES + N_BOOKS - len(REMOVED)
    assert meta["count"] == count == report["count"]
    assert meta["domains"] == [{"name": "movie", "start": 0, "stop": N_MOVIES - len(REMOVED)},
                               {"name": "book", "start": N_MOVIES - len(REMOVED), "stop": count}]
    assert (report["added"], report["changed"], report["removed"]) == (N_BOOKS, 1, len(REMOVED))
    assert meta["updates"][-1]["version"] == 2 and meta["item_model"]["variant"] == "fp32"
    assert report["load"]["served_versions"] == ["2"] and report["load"]["pruned"] == []
    # release 2 is version 2 of every model: the unchanged ones hard-linked, not copied
    onnx = [repo / "user_encoder" / v / "model.onnx" for v in ("1", "2")]
    assert onnx[0].stat().st_ino == onnx[1].stat().st_ino

    # the same catalog a redeploy would write: ids in prepare_items' order, kept rows copied,
    # the 21 encoded rows equal to the item tower's embeddings of their texts
    emb, ids, _ = cat.read_catalog(repo / "scorer" / "2" / "catalog")
    prepared = prepare_items(final)
    assert list(ids) == prepared["item_id"].tolist()
    kept = [i for i in ids if i in set(old_ids) and i != changed_id]
    np.testing.assert_array_equal(np.asarray(emb)[[list(ids).index(i) for i in kept]],
                                  np.asarray(old_emb)[[list(old_ids).index(i) for i in kept]])
    fresh = prepared[prepared["item_id"].isin([*books["item_id"], changed_id])]
    want = OnnxEncoder(exported / "model.onnx", max_length=128).encode(fresh["text"].tolist())
    np.testing.assert_allclose(np.asarray(emb)[fresh.index.to_numpy()], want, atol=1e-5)

    with Client(server.grpc_url) as c, Client(server.grpc_url, model="recommend_fused") as fused:
        # every new book is the top result for its own text (same fp32 model, score 1), from
        # the ensemble and from recommend_fused alike
        for _, book in books.iterrows():
            for client in (c, fused):
                got = client.recommend(text_of(book), k=1)
                assert got.item_ids == [book["item_id"]] and got.domains == ["book"]
                assert got.scores[0] > 0.999
        # the changed item answers to its new text, and the served vector is the new one
        new_text = text_of(movies.iloc[CHANGED].to_dict() | NEW_TITLE)
        assert c.recommend(new_text, k=1).item_ids == [changed_id]
        row = np.asarray(emb[list(ids).index(changed_id)])
        np.testing.assert_allclose(c.embed_items([new_text])[0], row, atol=1e-5)
        assert float(row @ old_row) < 0.9
        # removed items are gone: unknown to EXCLUDE, absent from results for their own text
        with pytest.raises(ServingError, match=f"{len(REMOVED)} EXCLUDE id\\(s\\) not in the "
                                               "catalog"):
            c.recommend("x", exclude=removed)
        for i in REMOVED:
            assert movies["item_id"][i] not in c.recommend(text_of(movies.iloc[i]), k=20).item_ids


def test_write_then_load_separately_and_old_versions_pruned(served, data):
    """update without --url writes version 3 (the server keeps version 2); `towerlite catalog
    load` loads it, checks it, and deletes version 1 (the previous one stays for a rollback)."""
    from conftest import run_cli

    repo, server = served
    if scorer_versions(repo) != [1, 2]:
        pytest.skip("needs the update of test_update_under_concurrent_requests_loses_none")
    movies, _ = data
    gone = movies["item_id"][20]
    report = update(repo, remove=[gone], progress=False)
    assert report["version"] == 3 and "load" not in report and report["encoded"] == 0
    with Client(server.grpc_url) as c:
        assert len(c.recommend("x", k=3, exclude=[gone])) == 3  # still version 2
        done = run_cli("catalog", "load", "--repository", str(repo), "--url", server.http_url,
                       "--protocol", "http")
        assert done.returncode == 0, done.stderr
        assert "serving scorer version(s) 3" in done.stdout
        assert "deleted old version(s) 1" in done.stderr
        with pytest.raises(ServingError, match="1 EXCLUDE id\\(s\\) not in the catalog"):
            c.recommend("x", exclude=[gone])
    assert scorer_versions(repo) == [2, 3]


# ---------------------------------------------------------------------------------------------
# loading fails: the version stays written, complete, and the message says how to retry

def test_server_down_leaves_a_complete_version_and_says_how_to_retry(repo, data, tmp_path):
    from towerlite.serving.triton import free_port

    items_csv, remove_txt, _ = changes(data, tmp_path)
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(LoadError) as err:
        update(repo, items_csv, remove_txt, url=url, progress=False)
    message = str(err.value)
    assert "scorer version 2 is written completely" in message
    assert "cannot reach Triton at grpc://" + url in message
    assert f"towerlite catalog load --repository {repo} --url {url}" in message
    assert "\n" not in message
    meta = json.loads((repo / "scorer" / "2" / "catalog" / "catalog.json").read_text())
    assert meta["count"] == N_MOVIES + N_BOOKS - len(REMOVED)
    assert scorer_versions(repo) == [1, 2] and not list((repo / "scorer").glob(".staging-*"))


def test_a_version_the_server_cannot_load_is_refused_and_the_old_one_serves(repo, tmp_path):
    from towerlite.serving.catalog_update import load_version
    from towerlite.serving.release import current_release, store
    from towerlite.serving.release.store import point_disk
    from towerlite.serving.triton import start_server

    with start_server(repo, log_path=tmp_path / "triton.log") as server:
        broken = repo / "scorer" / "2"
        shutil.copytree(repo / "scorer" / "1", broken)
        (broken / "catalog" / "item_ids.npy").unlink()
        store.carry(repo, 1, 2)  # release 2: the broken catalog, every other model as in 1
        point_disk(repo, 2)
        with pytest.raises(LoadError) as err:
            load_version(repo, server.grpc_url)
        message = str(err.value)
        assert "tried and refused it, and keeps serving the previous release" in message
        assert "item_ids.npy is missing" in message and f"remove {broken}" in message
        with Client(server.grpc_url) as c:
            got = c.recommend("x", k=2)
            assert len(got) == 2 and got.release == 1
        # the configs name the serving release again: a restart would not try the broken one
        assert current_release(repo) == 1
    assert scorer_versions(repo) == [1, 2]  # nothing deleted after a failed load


def test_update_loads_on_every_replica_and_names_the_ones_it_missed(repo, data, tmp_path):
    """Replicas sharing one repository (Kubernetes, the Helm chart): each loads the new version
    in turn, old versions are pruned after the last; a replica that is down is named, with the
    ones already serving the new version."""
    from towerlite.serving.triton import free_port, start_server

    movies, books = data
    gone, later = movies["item_id"][20], movies["item_id"][21]
    with start_server(repo, log_path=tmp_path / "a.log") as a, \
            start_server(repo, log_path=tmp_path / "b.log") as b:
        report = update(repo, books.head(2), remove=[gone], url=[a.grpc_url, b.grpc_url],
                        progress=False)
        assert [r["url"] for r in report["loads"]] == [a.grpc_url, b.grpc_url]
        assert [r["pruned"] for r in report["loads"]] == [[], []]  # keep 2: versions 1 and 2
        for server in (a, b):
            with Client(server.grpc_url) as c:
                with pytest.raises(ServingError, match="not in the catalog"):
                    c.recommend("x", exclude=[gone])
        down = f"127.0.0.1:{free_port()}"
        with pytest.raises(LoadError) as err:
            update(repo, remove=[later], url=[a.grpc_url, down, b.grpc_url], progress=False)
        message = str(err.value)
        assert f"replicas serving the new version: {a.grpc_url}; not loaded on {down} " \
               "(nor on the 1 after it)" in message
        assert "cannot reach Triton" in message
        with Client(b.grpc_url) as c:  # b was not reached: still version 2
            assert len(c.recommend("x", k=2, exclude=[later])) == 2
    assert scorer_versions(repo) == [1, 2, 3]  # nothing pruned after a failed load
    from towerlite.serving.release import current_release

    assert current_release(repo) == 3  # what replica a serves: the configs name it


def test_replica_urls_are_every_address_of_a_name():
    from towerlite.serving.catalog_update import replica_urls

    assert "127.0.0.1:8001" in replica_urls("localhost:8001")
    with pytest.raises(TowerliteError, match="give HOST:PORT"):
        replica_urls("rec-towerlite-replicas")
    with pytest.raises(TowerliteError, match="cannot resolve no-such-host.invalid"):
        replica_urls("no-such-host.invalid:8001")


def test_server_without_explicit_model_control_is_explained(repo, data, tmp_path):
    from towerlite.serving.triton import start_server

    _, books = data
    with start_server(repo, log_path=tmp_path / "triton.log", model_control="none") as server:
        with pytest.raises(LoadError, match="does not allow loading models .* restart the "
                                            "server to serve it"):
            update(repo, books.head(2), url=server.grpc_url, progress=False)
        with Client(server.grpc_url) as c:  # still serving version 1
            assert len(c.recommend("x", k=2)) == 2


# ---------------------------------------------------------------------------------------------
# no server: inputs, the index, the CLI

def _csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


HEADER = ",".join(ITEM_COLUMNS)
BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.csv", None, "nope.csv: no such items file"),
    "unknown column": (lambda d: _csv(d / "a.csv", HEADER + ",rating", "b9,book,T,2001,,A,P,5"),
                       None, "unknown column(s) 'rating'; the item columns are item_id, domain"),
    "missing column": (lambda d: _csv(d / "a.csv", "item_id,domain", "b9,book"), None,
                       "missing column(s) title"),
    "unknown domain": (lambda d: _csv(d / "a.csv", HEADER, "m1,music,Song,2001,,,"), None,
                       "a.csv, line 2 ('m1'): no item text rendering for domain 'music'"),
    "bad year": (lambda d: _csv(d / "a.csv", HEADER, "b9,book,T,soon,,A,P"), None,
                 "line 2 ('b9'): year 'soon' is not a whole number"),
    "duplicate id": (lambda d: _csv(d / "a.csv", HEADER, "b9,book,T,1,,A,P", "b9,book,U,1,,A,P"),
                     None, "item id(s) given more than once: 'b9'"),
    "not csv or jsonl": (lambda d: _csv(d / "a.xlsx", HEADER), None,
                         "must be CSV (.csv) or JSON Lines (.jsonl)"),
    "bad json line": (lambda d: _csv(d / "a.jsonl", '{"item_id": "b9"', ), None,
                      "a.jsonl, line 1: not JSON"),
    "unknown ids to remove": (None, ["nope-1", "Heat (1995)", "nope-2"],
                              "2 id(s) to remove are not in the catalog (version 1): 'nope-1', "
                              "'nope-2'"),
    "missing remove file": (None, Path("/nonexistent/remove.txt"),
                            "no such file of item ids to remove"),
    "id given and removed": (lambda d: _csv(d / "a.csv", HEADER, "Heat (1995),movie,H,1995,,,"),
                             ["Heat (1995)"], "both given as items and to remove: 'Heat (1995)'"),
    "nothing": (None, None, "nothing to update"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_writes_nothing(repo, tmp_path, case):
    make_items, remove, message = BAD_INPUTS[case]
    items = make_items(tmp_path) if make_items else None
    with pytest.raises(TowerliteError) as err:
        update(repo, items, remove, progress=False)
    assert message in str(err.value)
    assert scorer_versions(repo) == [1] and not list((repo / "scorer").glob(".staging-*"))


def test_repository_root_and_a_foreign_item_tower_are_refused(repo, data, tmp_path):
    _, books = data
    root = repo.parent
    with pytest.raises(TowerliteError, match="holds the flavor folder\\(s\\) portable: name one"):
        update(root, books.head(1), progress=False)
    # catalog.json names another model than the repository (and the export) hold
    catalog_json = repo / "scorer" / "1" / "catalog" / "catalog.json"
    meta = json.loads(catalog_json.read_text())
    meta["item_model"]["sha256"] = "0" * 64
    catalog_json.unlink()  # a hard link to the pristine copy: replace, don't edit
    catalog_json.write_text(json.dumps(meta))
    with pytest.raises(TowerliteError, match="the item tower that encoded this catalog .* is "
                                             "neither .*item_encoder/1/model.onnx"):
        update(repo, books.head(1), progress=False)
    assert scorer_versions(repo) == [1]


@pytest.mark.parametrize("kind", ["ivf", "ivf_sq8"])
def test_ivf_index_is_rebuilt_or_dropped(exported, data, tmp_path, kind):
    """A catalog deployed with an IVF index gets a new index of the same kind over the merged
    catalog (JSON Lines input here); `--index exact` drops it. (ivf_pq needs 10k items: its
    rebuild is the same call, tested in test_serving on synthetic vectors.)"""
    import faiss

    from towerlite.serving.deploy import deploy
    from towerlite.serving.index import ROWS_FILE

    movies, books = data
    deploy(exported, tmp_path, variant="fp32", items=movies, flavors=("portable",),
           index=kind, nprobe=4, progress=False)
    repo = tmp_path / "portable"
    lines = [json.dumps({**r, "genres": ["Fiction"], "year": int(r["year"])})
             for r in books[list(ITEM_COLUMNS)].to_dict("records")]
    (tmp_path / "books.jsonl").write_text("\n".join(lines) + "\n")
    report = update(repo, tmp_path / "books.jsonl", progress=False)
    folder = repo / "scorer" / "2" / "catalog"
    meta = json.loads((folder / "catalog.json").read_text())
    assert report["index"] == kind and meta["index"]["nprobe"] == 4
    assert meta["index"]["kind"] == {"ivf": "ivf_flat", "ivf_sq8": "ivf_sq8"}[kind]
    assert meta["index"]["recall_vs_exact"]["recall"] > 0.5
    assert faiss.read_index(str(folder / "index.faiss")).ntotal == N_MOVIES + N_BOOKS
    # SQ8's re-scoring rows, written with each version's index
    assert (folder / ROWS_FILE).is_file() == (kind == "ivf_sq8")
    if kind == "ivf_sq8":
        assert np.load(folder / ROWS_FILE).shape == (N_MOVIES + N_BOOKS, 384)
    report = update(repo, remove=[books["item_id"][0]], index="exact", progress=False)
    folder = repo / "scorer" / "3" / "catalog"
    assert report["index"] == "exact" and not (folder / "index.faiss").exists()
    assert not (folder / ROWS_FILE).exists()
    assert "index" not in json.loads((folder / "catalog.json").read_text())


def test_cli_update_writes_the_next_version_and_errors_are_one_line(repo, data, tmp_path):
    from conftest import run_cli

    items_csv, remove_txt, _ = changes(data, tmp_path)
    done = run_cli("catalog", "update", "--repository", str(repo), "--items", str(items_csv),
                   "--remove", str(remove_txt))
    assert done.returncode == 0, done.stderr
    count = N_MOVIES + N_BOOKS - len(REMOVED)
    assert f"catalog version 2: {count} items (+{N_BOOKS} added, 1 changed, -3 removed)" \
        in done.stdout
    assert "towerlite catalog load" in done.stdout  # not loaded: says how
    done = run_cli("catalog", "update", "--repository", str(repo), "--items",
                   str(tmp_path / "missing.csv"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"towerlite: error: {tmp_path / 'missing.csv'}: no such items file"]
    assert scorer_versions(repo) == [1, 2]
    # every replica behind a name: one that resolves to nothing is one line, nothing loaded
    done = run_cli("catalog", "load", "--repository", str(repo), "--each-address-of",
                   "no-such-host.invalid:8001")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()  # the resolver's reason follows: it varies
    assert len(lines) == 1 and lines[0].startswith(
        "towerlite: error: cannot resolve no-such-host.invalid: "), lines
    done = run_cli("catalog", "load", "--repository", str(repo), "--url", "a:1",
                   "--each-address-of", "b:1")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr
