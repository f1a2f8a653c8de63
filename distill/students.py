"""Students: a pretrained encoder, optionally cut to some of its layers, optionally with a
linear head into the teacher's space; and the folder format they are saved in.

The saved folder is a Hugging Face model (AutoModel/AutoTokenizer load it) in the
sentence-transformers layout, so pooling, projection and normalization are described beside
the weights (modules.json, 1_Pooling/, 2_Dense/, 3_Normalize/) and `towerlite export`,
`towerlite.models.SentenceEncoder` and sentence-transformers all read it the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import replace_dir
from towerlite.models import Pipeline, build_module, load_dense, read_pipeline, resolve_model

from .config import StudentSpec


def start_config(spec: StudentSpec):
    """The start model's folder and transformer config (cheap: no weights loaded)."""
    from transformers import AutoConfig

    folder = resolve_model(spec.start)
    try:
        return folder, AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        first_line = str(exc).splitlines()[0]
        raise TowerliteError(f"student start {spec.start!r} could not be loaded: "
                             f"{first_line}") from exc


def check_spec(name: str, spec: StudentSpec, teacher_dim: int) -> None:
    """A student that cannot be trained against this teacher fails here, before any work."""
    folder, config = start_config(spec)
    n_layers = config.num_hidden_layers
    if spec.layers is not None and (
            not spec.layers or any(i < 0 or i >= n_layers for i in spec.layers)):
        raise TowerliteError(f"student {name}: layers {list(spec.layers)} out of range for a "
                             f"{n_layers}-layer model")
    dim = output_dim(Path(folder), config.hidden_size)
    if not spec.project and dim != teacher_dim:
        raise TowerliteError(f"student {name}: its embeddings are {dim}-d but the teacher's are "
                             f"{teacher_dim}-d; set project=true to add a projection head")


def output_dim(folder: Path, hidden: int) -> int:
    pipeline = read_pipeline(folder)
    if pipeline.dense:
        return json.loads((folder / pipeline.dense[-1] / "config.json").read_text())["out_features"]
    return hidden


def build_student(spec: StudentSpec, teacher_dim: int):
    """(module, tokenizer): the start model with dropout off (a deterministic target, so a
    resumed run reproduces an uninterrupted one), its kept layers, pooling, head, normalize."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder, _ = start_config(spec)
    transformer = AutoModel.from_pretrained(folder, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0,
                                            attn_implementation="eager")
    if getattr(transformer, "pooler", None) is not None:  # unused by mean pooling; DDP wants every
        transformer.pooler.requires_grad_(False)        # trained parameter to get a gradient
    if spec.layers is not None:
        layers = transformer.encoder.layer
        transformer.encoder.layer = torch.nn.ModuleList([layers[i] for i in spec.layers])
        transformer.config.num_hidden_layers = len(spec.layers)
    pipeline = read_pipeline(Path(folder))
    dense = [load_dense(Path(folder) / sub) for sub in pipeline.dense]
    if spec.project:
        dim = output_dim(Path(folder), transformer.config.hidden_size)
        dense.append(torch.nn.Sequential(torch.nn.Linear(dim, teacher_dim), torch.nn.Identity()))
    dense_folders = tuple(f"{i + 2}_Dense" for i in range(len(dense)))
    pipeline = Pipeline(pipeline.pooling, dense_folders, True, 512)
    return build_module(transformer, pipeline, dense), AutoTokenizer.from_pretrained(folder)


def fit_projection(module, tokenizer, texts: list[str], targets, max_length: int,
                   ridge: float = 1.0) -> float | None:
    """Start the head at the least-squares map from pooled student output to the teacher's
    embeddings (a ridge fit on training texts), not at random; returns the fit's mean cosine
    (None, the head left at random, when there are too few texts for a fit)."""
    import numpy as np
    import torch

    from towerlite.models import encode_with

    class Pooled(torch.nn.Module):
        def forward(self, ids, mask):
            return module.pooled(ids, mask)

    x = encode_with(Pooled(), tokenizer, texts, 32, max_length)
    if len(x) < 4 * (x.shape[1] + 1):  # fewer texts than that interpolates them, it does not fit
        return None
    x1 = np.hstack([x, np.ones((len(x), 1), np.float32)])
    w = np.linalg.solve(x1.T @ x1 + ridge * np.eye(x1.shape[1]), x1.T @ targets)
    head = module.dense[-1][0]
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[:-1].T.copy()))
        head.bias.copy_(torch.from_numpy(w[-1].copy()))
    pred = x1 @ w
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    return float((pred * targets).sum(1).mean())


def save_student(module, tokenizer, folder: Path, max_length: int, provenance: dict) -> Path:
    """Write the model folder atomically (a temp folder renamed into place)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    module.transformer.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling"}]

    hidden = module.transformer.config.hidden_size
    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": module.pooling == "cls",
        "pooling_mode_mean_tokens": module.pooling == "mean",
        "pooling_mode_max_tokens": module.pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=1))
    for i, block in enumerate(module.dense):
        linear, path = block[0], f"{i + 2}_Dense"
        (tmp / path).mkdir()
        activation = ("activation.Tanh" if type(block[1]).__name__ == "Tanh"
                      else "linear.Identity")
        (tmp / path / "config.json").write_text(json.dumps({
            "in_features": linear.in_features, "out_features": linear.out_features, "bias": True,
            "activation_function": "torch.nn.modules." + activation}, indent=1))
        save_file({"linear.weight": linear.weight.detach().contiguous(),
                   "linear.bias": linear.bias.detach().contiguous()},
                  str(tmp / path / "model.safetensors"))
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": path,
                        "type": "sentence_transformers.models.Dense"})
    norm = f"{len(modules) + 1}_Normalize"
    (tmp / norm).mkdir()
    modules.append({"idx": len(modules), "name": str(len(modules)), "path": norm,
                    "type": "sentence_transformers.models.Normalize"})
    (tmp / "modules.json").write_text(json.dumps(modules, indent=1))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_length,
                                                              "do_lower_case": False}, indent=1))

    (tmp / "towerlite_student.json").write_text(json.dumps(provenance, indent=1))
    return replace_dir(tmp, folder)
