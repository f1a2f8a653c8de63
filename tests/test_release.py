"""`towerlite release`: a new user tower, or a new item tower with the catalog it re-embeds,
served as one release on a REAL Triton server (2.51 from nvidia-pytriton, model control
explicit) while requests keep coming, and rolled back the same way. None may fail, and none may
be answered by parts of two releases: every answer's scores must be those of the release its
RELEASE output names, computed here offline with onnxruntime from that release's files.

The towers: the packaged student-start exported to fp32 (release 1, both towers), and copies of
it with one weight matrix perturbed (a stand-in for a fine-tuned tower: same tokenizer, same
width, different vectors), so each release scores differently and a mix would show."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from towerlite.errors import TowerliteError
from towerlite.serving.client import Client
from towerlite.serving.release import (
    ReleaseRequest,
    current_release,
    release,
    releases,
    rollback,
)
from towerlite.serving.release.reference import ReleaseReference
from towerlite.serving.release.switch import LoadError

pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__:DeprecationWarning")

N_MOVIES = 300
TEXTS = ["[movie] Heat (1995). Action|Crime|Thriller; [movie] Casino (1995). Drama|Thriller",
         "[movie] Toy Story (1995). Animation|Children's|Comedy",
         "funny animated films for children"]
K = 10


def perturbed_export(exported: Path, out: Path, seed: int) -> Path:
    """An export folder whose fp32 model is `exported`'s with noise on its largest weight."""
    import onnx
    from onnx import numpy_helper

    out.mkdir(parents=True)
    for name in ("tokenizer.json", "export_report.json"):
        shutil.copy2(exported / name, out / name)
    model = onnx.load(str(exported / "model.onnx"))
    big = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight = numpy_helper.to_array(big)
    noise = np.random.default_rng(seed).normal(0, weight.std() * 0.5, weight.shape)
    big.CopyFrom(numpy_helper.from_array((weight + noise).astype(weight.dtype), big.name))
    onnx.save(model, str(out / "model.onnx"))
    return out


@pytest.fixture(scope="module")
def movies(cache):
    from towerlite.data import load_movielens

    return load_movielens().items.head(N_MOVIES).reset_index(drop=True)


@pytest.fixture(scope="module")
def towers(exported, tmp_path_factory):
    folder = tmp_path_factory.mktemp("release-towers")
    return {"user_v2": perturbed_export(exported, folder / "user-v2", seed=1),
            "item_v3": perturbed_export(exported, folder / "item-v3", seed=2)}


@pytest.fixture(scope="module")
def pristine(exported, movies, tmp_path_factory):
    from towerlite.serving.deploy import deploy

    out = tmp_path_factory.mktemp("release-repo")
    deploy(exported, out, variant="fp32", items=movies, flavors=("portable",), progress=False)
    return out / "portable"


@pytest.fixture
def repo(pristine, tmp_path):
    return Path(shutil.copytree(pristine, tmp_path / "portable", copy_function=os.link))


class Traffic:
    """Threads sending `recommend` (ensemble) and `recommend_fused` over gRPC and HTTP until
    stopped; every answer is kept with its release and scores, every failure counted."""

    def __init__(self, server, threads: int = 8):
        self.server = server
        self.stop = threading.Event()
        self.answers: list[tuple[str, int, int | None, np.ndarray]] = []
        self.failed: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        protocol = "grpc" if i % 4 != 3 else "http"
        url = self.server.grpc_url if protocol == "grpc" else self.server.http_url
        model = "recommend" if i % 2 == 0 else "recommend_fused"
        with Client(url, protocol, model=model) as client:
            n = i
            while not self.stop.is_set():
                n += 1
                try:
                    got = client.recommend(TEXTS[n % len(TEXTS)], k=K)
                    self.answers.append((model, n % len(TEXTS), got.release, got.scores))
                except Exception as exc:  # noqa: BLE001  (every failure counts)
                    self.failed.append(f"{protocol} {model}: {exc}")

    def __enter__(self):
        for t in self.threads:
            t.start()
        while len(self.answers) < 8 and not self.failed:  # every thread under way
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        time.sleep(1.0)  # and on the last release for a while
        self.stop.set()
        for t in self.threads:
            t.join(60)


def test_release_and_rollback_under_load_fail_none_and_mix_none(repo, movies, towers, tmp_path):
    from towerlite.serving.triton import start_server

    expected = ReleaseReference(repo)
    with start_server(repo, log_path=tmp_path / "triton.log") as server, \
            Traffic(server) as traffic:
        url = server.grpc_url
        two = release(ReleaseRequest(repo, user_model=towers["user_v2"], variant="fp32",
                                     note="new user tower", urls=(url,), progress=False))
        three = release(ReleaseRequest(repo, item_model=towers["item_v3"], variant="fp32",
                                       items=movies, urls=(url,), progress=False))
        back = rollback(repo, [url])
        forward = rollback(repo, [url], to=3)
    assert (two["release"], three["release"], back["release"], forward["release"]) == (2, 3, 2, 3)
    assert list(two["changed"]) == ["user_encoder"]
    assert list(three["changed"]) == ["item_encoder", "scorer"]
    assert three["changed"]["scorer"]["count"] == N_MOVIES

    # the check has teeth: a mixed answer — a user vector of release a scored by the catalog of
    # release b, tagged b by that scorer — does not pass as release b (wherever a's user tower
    # differs from b's: releases 2 and 3 share theirs)
    for text in TEXTS:
        users = {r: expected.user_vector(r, text) for r in (1, 2, 3)}
        for a in (1, 2, 3):
            for b in (1, 2, 3):
                if not np.array_equal(users[a], users[b]):
                    mixed = np.sort(expected.catalog("scorer", b)[0] @ users[a])[::-1][:K]
                    assert not expected.matches(b, text, mixed), (a, b)

    by_release = {}
    wrong = [a for a in traffic.answers if not expected.matches(a[2], TEXTS[a[1]], a[3])]
    for model, _, number, _ in traffic.answers:
        by_release.setdefault((model, number), 0)
        by_release[(model, number)] += 1
    print(f"\nrelease 1→2→3→2→3 under 8 threads: {len(traffic.answers)} answers "
          f"{dict(sorted(by_release.items(), key=str))}, {len(traffic.failed)} failed, "
          f"{len(wrong)} not their release's scores; switches "
          f"{[r['switched'][0]['seconds'] for r in (two, three, back, forward)]} s")
    assert traffic.failed == []
    assert wrong == []
    # every release answered on both paths while it served
    for model in ("recommend", "recommend_fused"):
        assert {n for m, n in by_release if m == model} == {1, 2, 3}

    assert current_release(repo) == 3
    assert [r["kind"] for r in releases(repo)] == ["release", "release", "rollback", "switch"]
    # the unchanged models' files are shared, not copied
    user = [repo / "user_encoder" / v / "model.onnx" for v in ("2", "3")]
    assert user[0].stat().st_ino == user[1].stat().st_ino


def test_a_restarted_server_serves_the_release_the_configs_name(repo, towers, tmp_path):
    """Without --url the release is written and the configs name it: a server started on the
    folder serves release 2 on every path, not the newest folder of each model."""
    from towerlite.serving.triton import start_server

    done = release(ReleaseRequest(repo, user_model=towers["user_v2"], variant="fp32",
                                  progress=False))
    assert done["release"] == 2 and done["switched"] == []
    expected = ReleaseReference(repo)
    # a stray newer folder (a half-written release by hand) is not served: the configs decide
    shutil.copytree(repo / "user_encoder" / "1", repo / "user_encoder" / "9",
                    copy_function=os.link)
    with start_server(repo, log_path=tmp_path / "triton.log") as server:
        for model in ("recommend", "recommend_fused"):
            with Client(server.grpc_url, model=model) as client:
                got = client.recommend(TEXTS[0], k=K)
                assert got.release == 2 and expected.matches(2, TEXTS[0], got.scores), model
    rolled = rollback(repo)  # no server: the configs name release 1 again
    assert rolled["release"] == 1 and current_release(repo) == 1


def test_a_release_the_server_refuses_is_removed_and_the_old_one_serves(repo, exported,
                                                                        tmp_path):
    from towerlite.serving.triton import start_server

    broken = tmp_path / "broken-export"
    broken.mkdir()
    for name in ("tokenizer.json", "export_report.json"):
        shutil.copy2(exported / name, broken / name)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    with start_server(repo, log_path=tmp_path / "triton.log") as server:
        with pytest.raises(LoadError) as err:
            release(ReleaseRequest(repo, user_model=broken, variant="fp32",
                                   urls=(server.grpc_url,), progress=False))
        message = str(err.value)
        assert "release 2 was refused by" in message and "keeps serving release 1" in message
        assert "\n" not in message
        with Client(server.grpc_url) as client:
            assert client.recommend(TEXTS[0], k=K).release == 1
    assert current_release(repo) == 1
    assert not (repo / "user_encoder" / "2").exists() and not (repo / "scorer" / "2").exists()
    assert releases(repo) == []  # nothing recorded


def test_a_server_without_explicit_model_control_is_explained(repo, towers, tmp_path):
    from towerlite.serving.triton import start_server

    with start_server(repo, log_path=tmp_path / "triton.log", model_control="none") as server:
        with pytest.raises(LoadError, match="does not allow loading models.*retry with "
                                            "`towerlite release --to 2"):
            release(ReleaseRequest(repo, user_model=towers["user_v2"], variant="fp32",
                                   urls=(server.grpc_url,), progress=False))
        with Client(server.grpc_url) as client:  # still release 1
            assert client.recommend(TEXTS[0], k=K).release == 1
    # written, and named by the configs: a restart serves it
    assert current_release(repo) == 2


@pytest.mark.parametrize("case", ["nothing", "item_without_items", "items_without_item",
                                  "keep", "width", "tokenizer", "history", "no_rollback",
                                  "missing_release", "missing_export", "no_history"])
def test_bad_release_requests_are_clear_errors_and_write_nothing(repo, exported, tiny_export,
                                                                 movies, tmp_path, case):
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    other_tokenizer = tmp_path / "other-tokenizer"
    if case == "tokenizer":
        shutil.copytree(exported, other_tokenizer)
        data = (other_tokenizer / "tokenizer.json").read_text()
        (other_tokenizer / "tokenizer.json").write_text(data.replace('"[UNK]"', '"[unk]"', 1))
    if case == "history":
        (repo / "history_encoder").mkdir()
        (repo / "history_scorer").mkdir()
    calls = {
        "nothing": (lambda: ReleaseRequest(repo), "nothing to release"),
        "item_without_items": (lambda: ReleaseRequest(repo, item_model=exported),
                               "needs its catalog embedded by it"),
        "items_without_item": (lambda: ReleaseRequest(repo, user_model=exported, items=movies),
                               "use `towerlite catalog update`"),
        "keep": (lambda: ReleaseRequest(repo, user_model=exported, keep=1), "at least 2"),
        "width": (lambda: release(ReleaseRequest(repo, user_model=tiny_export, variant="fp32",
                                                 progress=False)),
                  "-d; the served catalog is 384-d"),
        "tokenizer": (lambda: release(ReleaseRequest(repo, user_model=other_tokenizer,
                                                     variant="fp32", progress=False)),
                      "tokenizer differs from the one both towers share"),
        "history": (lambda: release(ReleaseRequest(repo, item_model=exported, variant="fp32",
                                                   items=movies, progress=False)),
                    "needs a history tower trained on its vectors"),
        "no_rollback": (lambda: rollback(repo), "no release before 1"),
        "missing_release": (lambda: rollback(repo, to=7), "release 7 is not"),
        "no_history": (lambda: release(ReleaseRequest(repo, history_model=tmp_path)),
                       "serves no history tower"),
        "missing_export": (lambda: release(ReleaseRequest(repo, user_model=tmp_path / "nope",
                                                          progress=False)),
                           "no such export folder"),
    }
    call, message = calls[case]
    with pytest.raises(TowerliteError, match=message.replace("(", "\\(").replace("`", ".")):
        call()
    if case == "history":
        shutil.rmtree(repo / "history_encoder")
        shutil.rmtree(repo / "history_scorer")
    assert sorted(p.relative_to(repo) for p in repo.rglob("*")) == before
    assert current_release(repo) == 1


def test_cli_release_list_and_one_line_errors(repo, towers):
    from conftest import run_cli

    done = run_cli("release", "--repository", str(repo), "--user-model", str(towers["user_v2"]),
                   "--variant", "fp32", "--note", "v2 user tower")
    assert done.returncode == 0, done.stderr
    assert "release 2 (release from 1; user_encoder): named by the configs on disk" in done.stdout
    listed = run_cli("release", "--repository", str(repo), "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[-1].startswith("*    2") and "v2 user tower" in listed.stdout
    bad = run_cli("release", "--repository", str(repo), "--to", "5")
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "release 5 is not (or no longer) complete" in bad.stderr


def test_a_repository_deployed_before_releases_is_adopted(repo):
    """Configs as deploy wrote them before releases (ensembles on version -1, the scorer on the
    newest version, no policy elsewhere) and a scorer version 2 from a catalog update: the next
    release first makes version 2 a release of every model (hard links), pinned."""
    import re

    from towerlite.serving.release import store

    for config in repo.glob("*/config.pbtxt"):
        text = re.sub(r"model_version: \d+", "model_version: -1", config.read_text())
        text = re.sub(r"^# the release\(s\) served.*\n", "", text, flags=re.M)
        text = re.sub(r"^version_policy: .*$", "version_policy: { latest: { num_versions: 1 } }"
                      if config.parent.name == "scorer" else "", text, flags=re.M)
        text = re.sub(r'^parameters \{ key: "RELEASE".*\n', "", text, flags=re.M)
        config.write_text(text)
    shutil.copytree(repo / "scorer" / "1", repo / "scorer" / "2", copy_function=os.link)
    assert current_release(repo) == 2  # what such a server serves: the newest scorer
    assert store.adopt(repo) == 2 and store.adopt(repo) is None
    assert current_release(repo) == 2 and store.complete(repo, 2)
    onnx = [repo / "user_encoder" / v / "model.onnx" for v in ("1", "2")]
    assert onnx[0].stat().st_ino == onnx[1].stat().st_ino
    assert "versions: [ 2 ]" in (repo / "user_encoder" / "config.pbtxt").read_text()
    assert 'key: "RELEASE" value: { string_value: "2" }' in \
        (repo / "recommend_fused" / "config.pbtxt").read_text()


def test_a_new_item_tower_re_embeds_a_packaged_catalog_keeping_the_index_kind(repo, towers,
                                                                              monkeypatch):
    """`release --item-model X --catalog movielens`: the packaged catalog (already rendered by
    `catalog_items`) in the scorer's order, embedded by X, searched as release 1 was (exact)."""
    from towerlite.runtime import OnnxEncoder
    from towerlite.serving import catalog as cat

    packaged = cat.catalog_items  # the real one, first N_MOVIES movies (the deploy's items)
    monkeypatch.setattr(cat, "catalog_items", lambda names, limit=None: packaged(names, N_MOVIES))
    done = release(ReleaseRequest(repo, item_model=towers["item_v3"], variant="fp32",
                                  catalog="movielens", progress=False))
    assert done["release"] == 2 and sorted(done["changed"]) == ["item_encoder", "scorer"]
    emb, ids, meta = cat.read_catalog(repo / "scorer" / "2" / "catalog")
    old_emb, old_ids, old_meta = cat.read_catalog(repo / "scorer" / "1" / "catalog")
    assert list(ids) == list(old_ids) and not meta.get("index") and not old_meta.get("index")
    texts = packaged(("movielens",), N_MOVIES).set_index("item_id").loc[list(ids), "text"]
    encoder = OnnxEncoder(towers["item_v3"] / "model.onnx", towers["item_v3"] / "tokenizer.json",
                          max_length=meta["max_length"])
    want = encoder.encode(texts.tolist()[:20])
    np.testing.assert_allclose(np.asarray(emb)[:20], want, atol=1e-4)
    assert not np.allclose(np.asarray(old_emb)[:20], want, atol=1e-2)
    # the mixing check cuts user texts where the served tokenizer does
    assert ReleaseReference(repo).max_length == meta["max_length"]
