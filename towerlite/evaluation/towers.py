"""Tower settings: what encodes the user texts and the item texts of a row.

A `--model` spec names one of
    teacher, student-start     the packaged models, in PyTorch fp32
    a Hugging Face folder      PyTorch fp32 (a distilled student: distill's OUT/model)
    an export folder           every ONNX variant in it (`towerlite export` output), or one:
                               FOLDER:int8_dynamic
Embeddings are cached per model file and text list (towerlite.embedding_cache), so a second
evaluation of the same model encodes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError
from towerlite.runtime import VARIANT_FILES

PACKAGED = ("teacher", "student-start")


@dataclass
class Tower:
    name: str  # the row label
    runtime: str  # "PyTorch fp32" or "ONNX <variant>"
    path: str  # the model folder or .onnx file (what the cache is keyed on)
    max_length: int
    load: Callable[[], object]  # the encoder (an object with .encode), loaded on a cache miss
    _model: object | None = None

    def model(self):
        if self._model is None:
            self._model = self.load()
        return self._model

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.model().encode(texts)

    def embed(self, texts: list[str], what: str) -> np.ndarray:
        from towerlite.embedding_cache import cache_key, cache_root, cached_embeddings

        key = cache_key(self.path, self.max_length, texts)
        emb, _ = cached_embeddings(texts, cache_root(), key, encode=self.encode, chunk=512,
                                   label=f"{self.name}: {what}")
        return emb


def _pytorch(spec: str, name: str) -> Tower:
    from towerlite.models import resolve_model

    folder = resolve_model(spec)

    def load():
        from towerlite.models import SentenceEncoder

        enc = SentenceEncoder(folder)
        enc.pipeline = replace(enc.pipeline, max_seq_length=128)  # as distill and export truncate
        return enc

    return Tower(name, "PyTorch fp32", folder, 128, load)


def _export_report(folder: Path) -> dict:
    import json

    report = folder / "export_report.json"
    return json.loads(report.read_text()) if report.is_file() else {}


def _onnx(folder: Path, variant: str, name: str, max_length: int) -> Tower:
    path = folder / VARIANT_FILES[variant]

    def load():
        from towerlite.runtime import OnnxEncoder

        return OnnxEncoder(path, folder / "tokenizer.json", max_length=max_length)

    return Tower(name, f"ONNX {variant}", str(path), max_length, load)


def towers_of(spec: str) -> list[Tower]:
    """The tower(s) a --model spec names; a clear error for anything else."""
    if spec in PACKAGED:
        return [_pytorch(spec, spec)]
    has_variant = ":" in spec and spec.rsplit(":", 1)[1] in VARIANT_FILES
    path_part, _, variant = spec.rpartition(":") if has_variant else (spec, "", "")

    folder = Path(path_part)
    if not folder.is_dir():
        raise TowerliteError(f"--model {spec!r}: not {' or '.join(PACKAGED)}, and {folder} is not "
                             "a folder (a Hugging Face model folder or a `towerlite export` "
                             "folder)")
    present = [v for v, file in VARIANT_FILES.items() if (folder / file).is_file()]
    if present:
        if variant and variant not in present:
            raise TowerliteError(f"--model {spec!r}: {folder} has no {variant} variant; it has "
                                 f"{', '.join(present)}")
        report = _export_report(folder)
        name = Path(report["source_model"]).name if report.get("source_model") else folder.name
        return [_onnx(folder, v, name, report.get("max_length", 128))
                for v in ([variant] if variant else present)]

    if (folder / "config.json").is_file():
        return [_pytorch(str(folder), folder.name)]
    raise TowerliteError(f"--model {spec!r}: {folder} holds neither ONNX files nor a Hugging Face "
                         "config.json")
