"""Real models: the reassembled teacher and the student start encode, and agree with
sentence-transformers; model arguments resolve the way the CLI promises."""

from __future__ import annotations

import numpy as np
import pytest

from towerlite.errors import TowerliteError
from towerlite.models import SentenceEncoder, resolve_model

TEXTS = ["[movie] Heat (1995). Action|Crime|Thriller",
         "[book] Clara Callan by Richard Bruce Wright (2001). HarperFlamingo Canada",
         "The jury said it believes these two offices should be combined.",
         "dog, domestic dog: a member of the genus Canis"]


@pytest.mark.parametrize("name,dim", [("teacher", 768), ("student-start", 384)])
def test_registry_models_give_normalized_embeddings(cache, name, dim):
    enc = SentenceEncoder(name)
    emb = enc.encode(TEXTS)
    assert emb.shape == (len(TEXTS), dim) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] < 0.9  # distinct texts are not collapsed onto one point


@pytest.mark.parametrize("name", ["teacher", "student-start"])
def test_encoder_matches_sentence_transformers(cache, name):
    from sentence_transformers import SentenceTransformer

    path = resolve_model(name)
    ours = SentenceEncoder(path).encode(TEXTS)
    ref = SentenceTransformer(path, device="cpu").encode(TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_model_arguments_resolve(cache, tmp_path):
    registry_path = resolve_model("all-minilm-l6-v2")
    assert resolve_model("student-start") == registry_path
    assert resolve_model(registry_path) == registry_path  # a local folder
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == \
        "sentence-transformers/all-MiniLM-L6-v2"  # a hub id goes to from_pretrained as is
    with pytest.raises(TowerliteError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(TowerliteError, match="not found"):
        resolve_model("./no/such/folder")
