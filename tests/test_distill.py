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
    return [sys.executable, "-m", "towerlite.distill", "--preset", "tiny", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def tiny_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "run"
    proc = subprocess.run(distill_cmd(out), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _weights(folder: Path) -> dict:
    from safetensors.numpy import load_file

    dense = load_file(folder / "2_Dense" / "model.safetensors")
    return {**load_file(folder / "model.safetensors"),
            **{f"dense.{k}": v for k, v in dense.items()}}


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


def test_resume_after_interruption_gives_the_same_weights_and_reuses_the_teacher_cache(
        tiny_run, tmp_path):
    out, _ = tiny_run
    ckpt = tmp_path / "run" / "checkpoints" / f"{CANDIDATE}.pt"
    proc = subprocess.Popen(distill_cmd(tmp_path / "run"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 900
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import torch

    state = torch.load(ckpt, weights_only=False)
    total = json.loads((out / "distill_report.json").read_text())["training"][CANDIDATE]["steps"]
    assert 0 < state["step"] < total, "the run was not interrupted mid-training"
    again = subprocess.run(distill_cmd(tmp_path / "run"), capture_output=True, text=True,
                           timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {ckpt} at step {state['step']}" in again.stderr
    # the teacher's embeddings came from the cache the first run filled
    report = json.loads((tmp_path / "run" / "distill_report.json").read_text())
    assert report["timings"]["teacher_texts_encoded"] == 0
    a, b = _weights(out / "model"), _weights(tmp_path / "run" / "model")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_two_process_torchrun(tiny_run, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m",
                           "towerlite.distill", "--preset", "tiny", "--out", str(tmp_path / "ddp")],
                          capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "distill_report.json").read_text())
    assert report["world_size"] == 2
    single = json.loads((tiny_run[0] / "distill_report.json").read_text())
    ddp_loss = [h["embed"] for h in report["training"][CANDIDATE]["history"]]
    assert len(ddp_loss) == single["training"][CANDIDATE]["steps"]  # same global batches
    assert np.mean(ddp_loss[-5:]) < np.mean(ddp_loss[:5])


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
        servable = {c.name for c in cfg.candidates} | set(cfg.students)
        assert cfg.serve.removeprefix("best-") in servable, name


def test_single_domain_user_texts_come_from_that_domain_only(cache):
    from towerlite.distill.texts import Catalogs, training_set

    cat = Catalogs()
    for dataset, tag in (("movielens", "[movie]"), ("bookcrossing", "[book]")):
        tr = training_set({"user-history": 30}, 10, 0, cat, user_datasets=(dataset,))
        assert len(tr.pairs) >= 20
        assert all(tr.texts[i].startswith(tag) and tr.texts[u].startswith(tag) for u, i in tr.pairs)


# -- the tiny-model tier: a student cut from a 2-layer random BERT, distilled from another tiny
# BERT (96-d, a Dense head: a teacher in another space) on synthetic texts; no assets.

def _tiny_student(tiny_model, layers=(1,)):
    """Layer 1 of the tiny BERT with a head into the tiny teacher's 96-d space (seeded, as the
    distill pipeline seeds torch before building its students)."""
    import torch

    from towerlite.distill.config import StudentSpec
    from towerlite.distill.students import build_student

    torch.manual_seed(0)
    return build_student(StudentSpec(start=str(tiny_model), layers=layers, project=True), 96)


def _cosine_to(module, tok, texts, targets) -> float:
    from towerlite.models import encode_with

    return float((encode_with(module, tok, texts, 32, 32) * targets).sum(1).mean())


def test_tiny_student_is_cut_projected_and_its_head_fitted(tiny_model, tiny_teacher):
    from conftest import tiny_sentences
    from transformers import AutoModel

    from towerlite.distill.students import fit_projection
    from towerlite.models import SentenceEncoder


    module, tok = _tiny_student(tiny_model)
    assert len(module.transformer.encoder.layer) == 1
    assert module.transformer.config.num_hidden_layers == 1
    kept = module.transformer.encoder.layer[0].state_dict()
    layer_1 = AutoModel.from_pretrained(tiny_model).encoder.layer[1].state_dict()
    assert kept.keys() == layer_1.keys() and all((kept[k] == layer_1[k]).all() for k in kept)
    head = module.dense[-1][0]
    assert (head.in_features, head.out_features) == (64, 96)
    texts = tiny_sentences(300, seed=7)
    targets = SentenceEncoder(str(tiny_teacher)).encode(texts, max_length=32)
    random_head = head.weight.detach().clone()
    assert fit_projection(module, tok, texts[:20], targets[:20], 32) is None  # too few to fit
    assert (head.weight == random_head).all()  # the head left as it was
    before = _cosine_to(module, tok, texts, targets)
    fit = fit_projection(module, tok, texts, targets, 32)
    after = _cosine_to(module, tok, texts, targets)
    assert fit == pytest.approx(after, abs=1e-4)  # what it reports is what the module now gives
    assert after > before + 0.1 and after > 0.5


def test_tiny_distillation_lowers_the_loss_and_saves_a_folder_everything_loads(
        tiny_model, tiny_teacher, tmp_path):
    from conftest import tiny_sentences
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    from towerlite.distill.config import DistillConfig
    from towerlite.distill.students import save_student
    from towerlite.distill.train import Dist, train
    from towerlite.models import SentenceEncoder, encode_with

    texts = tiny_sentences(160, seed=8)
    targets = SentenceEncoder(str(tiny_teacher)).encode(texts, max_length=32)
    pairs = [(i, i + 1) for i in range(0, 60, 2)]  # "user" text i, "item" text i + 1
    cfg = DistillConfig(epochs=2, batch_size=16, pair_batch_size=8, max_length=32, lr=1e-3,
                        checkpoint_every=100)
    module, tok = _tiny_student(tiny_model)
    before = _cosine_to(module, tok, texts, targets)
    result = train(module, tok, texts, targets, pairs, "embed+score", cfg, tmp_path / "c.pt",
                   "key", Dist())
    history = result["history"]
    assert len(history) == result["steps"] > 20 and result["resumed_at_step"] == 0
    assert result["pair_step_every"] >= 2
    assert sum("score" in h for h in history) == result["steps"] // result["pair_step_every"]
    assert _cosine_to(module, tok, texts, targets) > before + 0.05

    folder = save_student(module, tok, tmp_path / "student", 32, {"run_key": "key"})
    assert AutoModel.from_pretrained(folder).config.num_hidden_layers == 1
    assert json.loads((folder / "towerlite_student.json").read_text()) == {"run_key": "key"}
    ours = SentenceEncoder(str(folder)).encode(texts[:8])
    assert ours.shape == (8, 96)
    np.testing.assert_allclose(ours, encode_with(module, tok, texts[:8], 32, 32), atol=1e-5)
    ref = SentenceTransformer(str(folder), device="cpu").encode(texts[:8])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_tiny_distillation_resumed_after_an_interruption_gives_the_same_weights(
        tiny_model, tiny_teacher, tmp_path, monkeypatch):
    from conftest import tiny_sentences

    import towerlite.distill.train as training
    from towerlite.distill.config import DistillConfig
    from towerlite.models import SentenceEncoder

    texts = tiny_sentences(96, seed=9)
    targets = SentenceEncoder(str(tiny_teacher)).encode(texts, max_length=32)
    cfg = DistillConfig(epochs=1, batch_size=8, max_length=32, lr=1e-3, checkpoint_every=4)

    def distill(ckpt):
        module, tok = _tiny_student(tiny_model)
        result = training.train(module, tok, texts, targets, [], "embed", cfg, ckpt, "k",
                                training.Dist())
        return module, result

    whole, _ = distill(tmp_path / "whole.pt")
    run_steps = training.run_steps

    def killed_at_step_6(module, total, step_fn, *args, **kwargs):
        def step(model, k):
            if k == 6:
                raise KeyboardInterrupt  # as if killed: the last checkpoint is at step 4
            return step_fn(model, k)
        return run_steps(module, total, step, *args, **kwargs)

    monkeypatch.setattr(training, "run_steps", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        distill(tmp_path / "resumed.pt")
    monkeypatch.setattr(training, "run_steps", run_steps)
    resumed, result = distill(tmp_path / "resumed.pt")
    assert result["resumed_at_step"] == 4 and len(result["history"]) == result["steps"] == 12
    a, b = whole.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k].numpy(), b[k].numpy(), err_msg=k)


@pytest.mark.parametrize("args, message", [
    (["--set", 'mix={"brown": 0}'], "the data mix is empty"),
    (["--set", 'mix={"tweets": 5}'], "unknown source(s) in the mix"),
    (["--teacher", "/nonexistent/teacher"], "not found"),
    (["--set", "project=false"], "set project=true"),
    (["--set", "layers=[0, 2]"], "out of range for a 2-layer model"),
    (["--set", "lr_typo=1"], "unknown config field"),
    (["--set", 'user_datasets=["netflix"]'], "user_datasets must name some of"),
    (["--set", "serve=nobody"], "is neither a candidate nor best-<student>"),
    (["--set", "novalue"], "expected FIELD=VALUE"),
    (["--out", "FILE/out"], "not writable"),
])
def test_tiny_bad_input_fails_before_any_data_is_read(tiny_model, tiny_teacher, tmp_path,
                                                      capsys, args, message):
    """The distill command line on tiny models: each mistake is one line and exit 1, from the
    checks before any corpus loading (a data read would fail here: no asset cache)."""
    from towerlite.distill.cli import DESCRIPTION, add_arguments, command
    from towerlite.entry import standalone

    (tmp_path / "FILE").write_text("not a folder")
    student = {"start": str(tiny_model), "layers": [0], "project": True}
    for field in ("project", "layers"):  # the two student fields some cases set
        for i, arg in enumerate(args):
            if arg.startswith(f"{field}="):
                student[field] = json.loads(arg.partition("=")[2])
                args = args[:i - 1] + args[i + 1:]
                break
    argv = ["--preset", "tiny", "--teacher", str(tiny_teacher), "--out", str(tmp_path / "out"),
            "--set", "students=" + json.dumps({"s": student}),
            "--set", 'candidates=[{"name": "s", "student": "s", "loss": "embed"}]',
            "--set", "serve=s",
            *[str(tmp_path / a) if a.startswith("FILE/") else a for a in args]]
    assert standalone("towerlite distill", DESCRIPTION, add_arguments, command, argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("towerlite: error: "), err


def test_tiny_config_passes_the_checks_the_bad_inputs_fail(tiny_model, tiny_teacher, tmp_path):
    """The base of the cases above is itself valid: each case fails by its own mistake."""
    from towerlite.distill.config import DistillConfig
    from towerlite.distill.pipeline import preflight

    cfg = DistillConfig(out=str(tmp_path / "out"), teacher=str(tiny_teacher),
                        students={"s": {"start": str(tiny_model), "layers": [0],
                                        "project": True}},
                        candidates=[{"name": "s", "student": "s", "loss": "embed"}], serve="s")
    cfg = DistillConfig.from_json(cfg.to_json())
    folder, dim = preflight(cfg)
    assert dim == 96 and folder == str(tiny_teacher.resolve())
