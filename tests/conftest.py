"""Shared fixtures. The real assets live in the user's cache ($TOWERLITE_HOME); tests that
damage or re-fetch assets use a private, temporary cache instead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.fixture(scope="session")
def cache():
    """The shared asset cache, fetched if needed (the README's test command prepares it first)."""
    from towerlite.assets import prepare
    from towerlite.home import home

    prepare(log=lambda *_: None)
    return home()


@pytest.fixture(scope="session")
def exported(cache, tmp_path_factory):
    """The packaged student start exported to ONNX fp32 and int8 (shared by serving and eval)."""
    from towerlite.export.pipeline import ExportConfig, run

    out = tmp_path_factory.mktemp("export-student-start")
    run(ExportConfig(model="student-start", out=out, variants=("fp32", "int8_dynamic"),
                     parity_texts_per_source=8, measure_speed=False), log=lambda *_: None)
    return out


@pytest.fixture
def private_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TOWERLITE_HOME", str(home))
    return home


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `towerlite` command in a child process."""
    return subprocess.run([sys.executable, "-m", "towerlite", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
