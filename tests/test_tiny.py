"""The tiny-model tier's own checks: the tiny BERT (tests/conftest.py) is a model folder every
stage accepts, and the runtime pieces (tokenizer, padding, OnnxEncoder) behave on it as they
must on a real one. No real weights, no asset cache."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_TEXTS

from towerlite.errors import TowerliteError
from towerlite.models import SentenceEncoder, read_pipeline, resolve_model
from towerlite.runtime import OnnxEncoder, load_tokenizer, pad_batch


@pytest.mark.parametrize("which, dim, dense", [("tiny_model", 64, ()),
                                               ("tiny_teacher", 96, ("2_Dense",))])
def test_tiny_folder_is_a_sentence_encoder_sentence_transformers_agrees_with(request, which, dim,
                                                                             dense):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoConfig

    folder = request.getfixturevalue(which)
    config = AutoConfig.from_pretrained(folder)
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 64, 2)
    pipeline = read_pipeline(folder)
    assert pipeline.pooling == "mean" and pipeline.normalize and pipeline.dense == dense
    enc = SentenceEncoder(str(folder))
    emb = enc.encode(TINY_TEXTS)
    assert emb.shape == (len(TINY_TEXTS), dim) and enc.dim == dim and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # distinct texts, distinct embeddings
    ref = SentenceTransformer(str(folder), device="cpu").encode(TINY_TEXTS, convert_to_numpy=True)
    np.testing.assert_allclose(emb, ref, atol=1e-5)


def test_a_local_folder_resolves_to_itself_and_bad_folders_are_refused(tiny_model, tmp_path):
    assert resolve_model(str(tiny_model)) == str(tiny_model.resolve())
    with pytest.raises(TowerliteError, match="not a Hugging Face model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(TowerliteError, match="not found"):
        resolve_model("./no/such/folder")
    with pytest.raises(TowerliteError, match="could not be loaded"):
        (tmp_path / "config.json").write_text("{}")  # a config, but no model in it
        SentenceEncoder(str(tmp_path))


def test_runtime_tokenizer_truncates_does_not_pad_and_matches_transformers(tiny_model):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model)
    tok, pad_id = load_tokenizer(tiny_model / "tokenizer.json", max_length=12)
    assert pad_id == hf.pad_token_id
    encodings = tok.encode_batch(TINY_TEXTS)
    lengths = [len(e.ids) for e in encodings]
    assert max(lengths) == 12 and min(lengths) == 2  # "" is [CLS] [SEP]; batches are not padded
    for text, e in zip(TINY_TEXTS, encodings):
        assert e.ids == hf(text, truncation=True, max_length=12)["input_ids"], text
        assert e.ids[0] == hf.cls_token_id and e.ids[-1] == hf.sep_token_id


def test_pad_batch_pads_right_to_the_longest_or_the_first_bucket_that_holds_it():
    tokens = [[5, 6, 7], [8], [9, 10]]
    ids, mask = pad_batch(tokens, pad_id=3)
    assert ids.shape == mask.shape == (3, 3) and ids.dtype == mask.dtype == np.int64
    for row, t in enumerate(tokens):
        assert ids[row, :len(t)].tolist() == t and (ids[row, len(t):] == 3).all()
        assert mask[row].tolist() == [1] * len(t) + [0] * (3 - len(t))
    assert pad_batch(tokens, 0, buckets=(16, 2, 4))[0].shape == (3, 4)  # sorted, first that fits
    assert pad_batch(tokens, 0, buckets=(2,))[0].shape == (3, 3)  # none fits: the longest


def test_onnx_encoder_needs_its_tokenizer_and_a_list_of_texts(tiny_export, tmp_path):
    (tmp_path / "model.onnx").write_bytes((tiny_export / "model.onnx").read_bytes())
    with pytest.raises(TowerliteError, match="needs the .onnx file and tokenizer.json"):
        OnnxEncoder(tmp_path / "model.onnx")
    enc = OnnxEncoder(tiny_export / "model.onnx")
    assert enc.dim == 64 and enc.inputs == ["input_ids", "attention_mask"]
    with pytest.raises(TypeError, match="list of str"):
        enc.encode("one text, not a list")
    with pytest.raises(TypeError, match="list of str"):
        enc.encode(["a text", None])
    emb = enc.encode(TINY_TEXTS, batch_size=3)  # length-sorted batches, returned in input order
    np.testing.assert_allclose(emb, enc.encode(TINY_TEXTS, batch_size=3, sort_by_length=False),
                               atol=1e-5)
