"""Distillation on a small real config: a 2-layer student cut from all-MiniLM-L6-v2, a few
hundred real corpus texts, the real teacher (its embeddings cached after the first run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

CANDIDATE = "minilm2-proj"


def distill_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "towerlite.distill", "--preset", "tiny", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def tiny_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "run"
    proc = subprocess.run(distill_cmd(out), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    return {**load_file(folder / "model.safetensors"),
            **{f"dense.{k}": v for k, v in load_file(folder / "2_Dense" / "model.safetensors").items()}}


def test_output_folder_loads_and_encodes(tiny_run):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from towerlite.models import SentenceEncoder

    out, _ = tiny_run
    model = out / "model"
    assert AutoModel.from_pretrained(model).config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(model)("a test")["input_ids"]
    texts = ["[movie] Heat (1995). Action|Crime|Thriller", "a gloss: something said about a word"]
    ours = SentenceEncoder(str(model)).encode(texts)
    assert ours.shape == (2, 768)  # projected into the teacher's space
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    ref = SentenceTransformer(str(model), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_report_and_loss_goes_down(tiny_run):
    out, proc = tiny_run
    report = json.loads((out / "distill_report.json").read_text())
    history = report["training"][CANDIDATE]["history"]
    embed = [h["embed"] for h in history]
    assert np.mean(embed[-5:]) < np.mean(embed[:5])
    assert any("score" in h for h in history)  # the tiny preset trains with the score loss too
    rows = report["evaluation"]
    assert {"teacher", "student-start (as published)", CANDIDATE} <= set(rows)
    for name, row in rows.items():
        assert 0 <= row["retrieval"]["recall@10"] <= 1 and row["retrieval"]["users"] > 0, name
        assert row["pytorch_sentences_per_s"] > 0
    sources = set(rows[CANDIDATE]["agreement"]) - {"all"}
    assert {"brown", "wordnet", "imdb", "movielens-1m", "book-crossing", "user-history"} <= sources
    assert rows["teacher"]["agreement"]["all"]["spearman"] == pytest.approx(1.0)
    assert report["data"]["per_source"]["brown"] > 0 and report["config"]["mix"]["brown"] == 60
    assert "| " + CANDIDATE in proc.stdout  # the table is printed


def test_resume_after_interruption_gives_the_same_weights_and_reuses_the_teacher_cache(tiny_run, tmp_path):
    out, _ = tiny_run
    ckpt = tmp_path / "run" / "checkpoints" / f"{CANDIDATE}.pt"
    proc = subprocess.Popen(distill_cmd(tmp_path / "run"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    state = torch.load(ckpt, weights_only=False)
    total = json.loads((out / "distill_report.json").read_text())["training"][CANDIDATE]["steps"]
    assert 0 < state["step"] < total, "the run was not interrupted mid-training"
    again = subprocess.run(distill_cmd(tmp_path / "run"), capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt} at step {state['step']}" in again.stderr
    # the teacher's embeddings came from the cache the first run filled
    assert json.loads((tmp_path / "run" / "distill_report.json").read_text())["timings"]["teacher_texts_encoded"] == 0
    a, b = _weights(out / "model"), _weights(tmp_path / "run" / "model")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_process_torchrun(tiny_run, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "towerlite.distill",
                           "--preset", "tiny", "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=1200, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "distill_report.json").read_text())
    assert report["world_size"] == 2
    single = json.loads((tiny_run[0] / "distill_report.json").read_text())
    ddp_loss = [h["embed"] for h in report["training"][CANDIDATE]["history"]]
    assert len(ddp_loss) == single["training"][CANDIDATE]["steps"]  # same global batches
    assert np.mean(ddp_loss[-5:]) < np.mean(ddp_loss[:5])


@pytest.mark.parametrize("args, message", [
    (["--set", 'mix={"brown": 0}'], "the data mix is empty"),
    (["--set", 'mix={"tweets": 5}'], "unknown source(s) in the mix"),
    (["--teacher", "/nonexistent/teacher"], "not found"),
    (["--set", 'students={"s": {"start": "student-start", "layers": [0], "project": false}}',
      "--set", 'candidates=[{"name": "s", "student": "s", "loss": "embed"}]', "--set", "serve=s"],
     "set project=true"),
    (["--set", "lr_typo=1"], "unknown config field"),
    (["--set", 'user_datasets=["netflix"]'], "user_datasets must name some of"),
])
def test_bad_input_fails_fast(cache, tmp_path, args, message):
    start = time.monotonic()
    proc = run_cli("distill", "--preset", "tiny", "--out", str(tmp_path / "out"), *args)
    assert proc.returncode == 1
    assert message in proc.stderr, proc.stderr
    assert time.monotonic() - start < 60  # before any corpus loading or teacher work


def test_unwritable_output_fails_fast(cache, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # works as root too, unlike permissions
    proc = run_cli("distill", "--preset", "tiny", "--out", str(blocker / "out"))
    assert proc.returncode == 1 and "not writable" in proc.stderr, proc.stderr


def test_every_preset_is_a_valid_config():
    from towerlite.distill.config import PRESETS, DistillConfig, check
    from towerlite.distill.texts import check_mix

    for name, fields in PRESETS.items():
        cfg = DistillConfig.from_json(dict(fields))
        check(cfg)
        check_mix(cfg.mix)
        assert cfg.serve.removeprefix("best-") in {c.name for c in cfg.candidates} | set(cfg.students), name


def test_single_domain_user_texts_come_from_that_domain_only(cache):
    from towerlite.distill.texts import Catalogs, training_set

    cat = Catalogs()
    for dataset, tag in (("movielens", "[movie]"), ("bookcrossing", "[book]")):
        tr = training_set({"user-history": 30}, 10, 0, cat, user_datasets=(dataset,))
        assert len(tr.pairs) >= 20
        assert all(tr.texts[i].startswith(tag) and tr.texts[u].startswith(tag) for u, i in tr.pairs)
