"""Shared fixtures and the suite's tiers.

Tiers (markers registered in pyproject.toml, added here at collection):

    assets  needs the real assets: the prepared cache in $TOWERLITE_HOME (teacher and student
            weights, the corpora, MovieLens, Book-Crossing) or their package registries. Added
            to every test that uses the `cache` fixture (directly or through `exported` or
            any data fixture built on it); test_assets.py marks its fetching tests itself.
    server  starts a real Triton server. Added to every test whose own code, or one of whose
            fixtures, calls `start_server(` or launches `towerlite serve`.

The fast tier, `pytest -m "not assets and not server"`, needs neither: it runs on a tiny BERT
(`tiny_model`, built here) and synthetic data, and runs each test with an empty, private
$TOWERLITE_HOME and downloads refused, so a test that needs the real cache and is not marked
fails instead of reading (or fetching) it; torch runs on one thread there. The real assets
live in the user's cache; tests that damage or re-fetch assets use a private, temporary cache
instead.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import pytest

# Every fixture that reads the real cache depends on this one (`exported`, the data fixtures).
ASSET_FIXTURES = {"cache"}
# A test starts a Triton server when its code or one of its fixtures' code does this.
_STARTS_SERVER = re.compile(r"\bstart_server\(|\"towerlite\",\s*\"serve\"")


@lru_cache(maxsize=None)
def _starts_server(func) -> bool:
    try:
        return bool(_STARTS_SERVER.search(inspect.getsource(func)))
    except (OSError, TypeError):
        return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))  # the whole closure, fixtures of fixtures
        if names & ASSET_FIXTURES and not item.get_closest_marker("assets"):
            item.add_marker(pytest.mark.assets)
        info = getattr(item, "_fixtureinfo", None)
        funcs = [getattr(item, "function", None)]
        if info is not None:
            funcs += [d.func for n in names for d in info.name2fixturedefs.get(n, ())]
        if not item.get_closest_marker("server") and any(_starts_server(f) for f in funcs if f):
            item.add_marker(pytest.mark.server)


@pytest.fixture(autouse=True)
def _fast_tier(request, tmp_path_factory, monkeypatch):
    """A test not marked `assets` gets an empty cache of its own, no downloads, and torch on
    one thread (its models are tiny: on a 2-core machine shared with other work, two OpenMP
    threads spinning against the load made a tiny model's forward pass 20× slower)."""
    if request.node.get_closest_marker("assets") is not None:
        yield
        return
    from towerlite.assets import fetch

    def refuse(name, *args, **kwargs):
        raise AssertionError(f"a test not marked `assets` tried to download the asset {name!r}")

    monkeypatch.setenv("TOWERLITE_HOME", str(tmp_path_factory.mktemp("empty-home")))
    monkeypatch.setattr(fetch, "download", refuse)
    with one_torch_thread():
        yield


@contextmanager
def one_torch_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def cache():
    """The shared asset cache, fetched if needed (the README's test command prepares it first)."""
    from towerlite.assets import prepare
    from towerlite.home import home

    prepare()
    return home()


@pytest.fixture(scope="session")
def exported(cache, tmp_path_factory):
    """The packaged student start exported to ONNX fp32 and int8 (shared by serving and eval)."""
    from towerlite.export.pipeline import ExportConfig, run

    out = tmp_path_factory.mktemp("export-student-start")
    run(ExportConfig(model="student-start", out=out, variants=("fp32", "int8_dynamic"),
                     parity_texts_per_source=8, measure_speed=False))
    return out


@pytest.fixture
def private_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("TOWERLITE_HOME", str(home))
    return home


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `towerlite` command in a child process."""
    return subprocess.run([sys.executable, "-m", "towerlite", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=600)


# -- the tiny-model tier ---------------------------------------------------------------------
# A 2-layer, 64-d BERT with a WordPiece vocabulary learnt from a few hundred words, randomly
# initialised with a fixed seed and saved as a sentence-transformers folder (Transformer →
# mean Pooling → [Dense] → Normalize), the layout towerlite.models, export and distill read.

TINY_WORDS = """
the a an of and or to in on at by for with from as is was are were be been it its this that
these those he she they we you i his her their our my your who which what when where why how
not no yes all any some many most more less very so than then there here now just only also
movie film book story novel drama comedy action crime thriller romance horror western war
musical mystery fantasy adventure animation children documentary family history science
fiction heat president postman jury office offices cost administration efficiency greater
combined achieve reduce said believes should two three one four five first last new old good
bad great small large long short young man woman men women life love death world city house
night day time year years people friend friends father mother son daughter king queen war
peace dog cat animal member genus canis domestic wolf bird fish tree river sea mountain
road car train ship star sun moon light dark red blue green black white gold silver stone
fire water wind rain snow summer winter spring autumn morning evening music song dance game
play player team school teacher student class lesson word words language letter letters
paper press county grand investigation election evidence court judge law police doctor
nurse hospital church art artist painter writer poet author publisher publishing press
canada america england france london paris new york california texas harper collins
random house penguin vintage ballantine bantam books pocket signet wright richard bruce
clara callan rented curious yellow video store because controversy something about gloss
think know see look find give tell ask work seem feel try leave call keep let begin show
hear run move live hold bring write sit stand lose pay meet include continue set learn
change lead understand watch follow stop create speak read spend grow open walk win offer
remember consider appear buy wait serve die send expect build stay fall cut reach kill
remain suggest raise pass sell require report decide pull return explain hope develop
""".split()

TINY_TEXTS = [
    "[movie] Heat (1995). Action|Crime|Thriller",
    "[movie] The American President (1995). Comedy|Drama|Romance",
    "[book] Clara Callan by Richard Bruce Wright (2001). HarperFlamingo Canada",
    "dog, domestic dog, Canis familiaris: a member of the genus Canis",
    "The jury said it believes these two offices should be combined to achieve greater "
    "efficiency and reduce the cost of administration.",
    "I rented I AM CURIOUS-YELLOW from my video store because of all the controversy.",
    "short", "",
]


def tiny_sentences(n: int, seed: int = 0, words: int = 12) -> list[str]:
    """`n` synthetic texts of 1 to `words` vocabulary words (mixed in length, seeded)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(TINY_WORDS, size=int(rng.integers(1, words + 1))))
            for _ in range(n)]


def build_tiny_bert(folder: Path, seed: int = 0, dense_out: int | None = None,
                    max_seq_length: int = 128, initializer_range: float = 0.1) -> Path:
    """Write the tiny sentence encoder to `folder` (a Dense head to `dense_out` when given).
    Weights are drawn at std `initializer_range`: at BERT's 0.02 a random 2-layer model maps
    every text to nearly one point (and int8 to within 1e-5 of it); at 0.1 texts spread (mean
    pairwise cosine ≈0.89) and dynamic int8 lands at ≈0.997, the regime of a real model."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(TINY_WORDS + TINY_TEXTS + tiny_sentences(200),
                            WordPieceTrainer(vocab_size=600, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    hf_tok = BertTokenizerFast(tokenizer_object=tok, do_lower_case=True, unk_token="[UNK]",
                               pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                               mask_token="[MASK]", model_max_length=max_seq_length)

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=128,
                        max_position_embeddings=128, pad_token_id=0,
                        initializer_range=initializer_range)
    folder.mkdir(parents=True, exist_ok=True)
    BertModel(config).eval().save_pretrained(folder)
    hf_tok.save_pretrained(folder)

    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}))
    if dense_out:
        dense = torch.nn.Linear(64, dense_out)
        (folder / "2_Dense").mkdir(exist_ok=True)
        (folder / "2_Dense" / "config.json").write_text(json.dumps({
            "in_features": 64, "out_features": dense_out, "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh"}))
        save_file({"linear.weight": dense.weight.detach().contiguous(),
                   "linear.bias": dense.bias.detach().contiguous()},
                  str(folder / "2_Dense" / "model.safetensors"))
        modules.append({"idx": 2, "name": "2", "path": "2_Dense",
                        "type": "sentence_transformers.models.Dense"})
    norm = f"{len(modules)}_Normalize"
    (folder / norm).mkdir(exist_ok=True)
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": norm,
                    "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules, indent=1))
    (folder / "sentence_bert_config.json").write_text(json.dumps(
        {"max_seq_length": max_seq_length, "do_lower_case": False}))
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, 64-d BERT sentence encoder (mean pooling, normalized), random weights."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-bert", seed=0)


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """Another tiny BERT, with a Dense (tanh) head to 96-d: a teacher in another space."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny") / "tiny-teacher", seed=1,
                           dense_out=96)


def tiny_parity_texts() -> tuple[list[str], list[str], dict]:
    """Stand-ins for export's held-out corpus texts (parity) and training texts (calibration)."""
    held = tiny_sentences(48, seed=3) + [t for t in TINY_TEXTS if t]
    return held, tiny_sentences(32, seed=4), {"synthetic": len(held)}


@pytest.fixture(scope="session")
def tiny_export(tiny_model, tmp_path_factory) -> Path:
    """`tiny_model` through the whole export pipeline, every variant, the default parity gate;
    the corpus texts export reads for parity and calibration replaced by synthetic ones."""
    from towerlite.export import pipeline
    from towerlite.runtime import VARIANT_FILES

    out = tmp_path_factory.mktemp("tiny-export")
    with pytest.MonkeyPatch.context() as mp, one_torch_thread():
        mp.setattr(pipeline, "_texts", lambda cfg: tiny_parity_texts())
        report = pipeline.run(pipeline.ExportConfig(model=str(tiny_model), out=out,
                                                    variants=tuple(VARIANT_FILES),
                                                    measure_speed=False))
    assert report["variants"].keys() == VARIANT_FILES.keys()
    return out


def tiny_cases(n_items: int = 60, train_users: int = 80, eval_users: int = 30, seed: int = 0,
               max_history: int = 5):
    """A synthetic `towerlite.evaluation.cases.Cases`: a movie catalog of vocabulary titles,
    users whose likes walk it in steps of 1–3 (an order a sequence model can learn); the
    evaluated users' last like is their target, every other like is the training part."""
    import numpy as np

    from towerlite.data.render import join_user_text
    from towerlite.evaluation.cases import Cases

    rng = np.random.default_rng(seed)
    genres = ["Action", "Comedy", "Drama", "Crime", "Romance", "Thriller", "Western"]
    item_ids = [f"m{i}" for i in range(n_items)]
    item_texts = [f"[movie] {' '.join(rng.choice(TINY_WORDS, 2)).title()} "
                  f"({int(rng.integers(1950, 2000))}). {'|'.join(rng.choice(genres, 2))}"
                  for _ in range(n_items)]

    def walk():
        start, steps = rng.integers(n_items), rng.integers(1, 4, size=rng.integers(3, 12))
        return list(dict.fromkeys(int(x) for x in (start + np.cumsum(steps)) % n_items))

    train = [s for s in (walk() for _ in range(train_users)) if len(s) >= 2]
    evaluated = [s for s in (walk() for _ in range(eval_users)) if len(s) >= 2]
    seen = [s[:-1] for s in evaluated]
    targets = np.array([s[-1] for s in evaluated])
    histories = [s[-max_history:] for s in seen]
    train_likes = train + seen
    counts = np.bincount(np.concatenate(train_likes), minlength=n_items)
    return Cases(dataset="synthetic", domain="movie", item_ids=item_ids, item_texts=item_texts,
                 users=[f"u{i}" for i in range(len(evaluated))], histories=histories,
                 seen=seen, targets=targets,
                 user_texts=[join_user_text([item_texts[r] for r in h], max_history)
                             for h in histories],
                 train_likes=train_likes, target_counts=counts[targets], train_sequences=train,
                 settings={"users": len(evaluated), "catalog_items": n_items,
                           "catalog_full": True, "order": "synthetic walks"})
