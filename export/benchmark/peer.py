"""The peer baseline a user would reach for today: all-MiniLM-L6-v2 exported with optimum
(`ORTModelForFeatureExtraction(export=True)`), dynamically quantized with `ORTQuantizer` +
`AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False)`, cached, and run
through optimum with mean pooling and L2 normalization in numpy."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from towerlite.errors import TowerliteError

from .encoders import batched, hf_tokenize

PEER_NAME = "MiniLM-L6 ONNX int8 (optimum avx512_vnni)"  # the recipe in full: build_peer()
PEER_FILE = "model_quantized.onnx"

log = logging.getLogger(__name__)


def peer_session_options(threads: int):
    """The same onnxruntime session settings towerlite.runtime.session() gives our variants."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def peer_encoder(model, tokenizer, max_length: int, batch_size: int, sort_by_length: bool):
    """optimum's ORTModelForFeatureExtraction + mean pooling + L2 normalization in numpy."""
    def run(ids, mask):
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in model.input_names:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(model(**feed).last_hidden_state, dtype=np.float32)
        m = mask[..., None].astype(np.float32)
        emb = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
        return emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    return batched(run, hf_tokenize(tokenizer, max_length), tokenizer.pad_token_id, batch_size,
                   sort_by_length)


def default_peer_dir() -> Path:
    from towerlite.home import writable_home

    try:
        return writable_home() / "benchmark" / "peer-all-MiniLM-L6-v2-int8-avx512vnni"
    except TowerliteError:
        return Path(tempfile.gettempdir()) / "towerlite-peer-all-MiniLM-L6-v2-int8-avx512vnni"


def build_peer(minilm_folder: str, peer_dir: Path) -> dict:
    """The standard optimum recipe, cached in `peer_dir` (built in a staging folder, then
    renamed)."""
    recipe = {"export": "ORTModelForFeatureExtraction.from_pretrained(all-MiniLM-L6-v2, "
                        "export=True)",
              "quantize": "ORTQuantizer.from_pretrained(...).quantize("
                          "AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False))",
              "source": minilm_folder, "dir": str(peer_dir), "file": PEER_FILE}
    if (peer_dir / PEER_FILE).is_file():
        log.info(f"peer: reusing {peer_dir / PEER_FILE}")
        return recipe | {"cached": True, "quantization": _ort_quantization(peer_dir)}
    from optimum.onnxruntime import ORTModelForFeatureExtraction, ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    log.info(f"peer: exporting {minilm_folder} with optimum and quantizing (avx512_vnni, "
             f"dynamic) → {peer_dir}")
    peer_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=peer_dir.name + ".", dir=peer_dir.parent))
    exported = ORTModelForFeatureExtraction.from_pretrained(minilm_folder, export=True)
    exported.save_pretrained(staging)
    AutoTokenizer.from_pretrained(minilm_folder).save_pretrained(staging)
    quantizer = ORTQuantizer.from_pretrained(staging)
    quantizer.quantize(AutoQuantizationConfig.avx512_vnni(is_static=False, per_channel=False),
                       save_dir=staging)
    if not (staging / PEER_FILE).is_file():
        raise TowerliteError(f"optimum's quantizer did not write {staging / PEER_FILE}")
    if peer_dir.exists():  # a partial earlier build without the quantized file
        import shutil
        shutil.rmtree(peer_dir)
    staging.replace(peer_dir)
    return recipe | {"cached": False, "quantization": _ort_quantization(peer_dir)}


def _ort_quantization(peer_dir: Path) -> dict | None:
    """What optimum recorded it quantized (ort_config.json), e.g. which operator types."""
    try:
        return json.loads((peer_dir / "ort_config.json").read_text()).get("quantization")
    except (OSError, ValueError):
        return None


def load_peer(peer_dir: Path, threads: int):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    model = ORTModelForFeatureExtraction.from_pretrained(peer_dir, file_name=PEER_FILE,
                                                         session_options=peer_session_options(threads))
    return model, AutoTokenizer.from_pretrained(peer_dir)
