"""PyTorch sentence encoder → ONNX graph with pooling, projection and normalization inside.

The graph takes `input_ids` and `attention_mask` (int64, dynamic batch and sequence) and
returns `sentence_embedding` (float32, L2-normalized when the model normalizes). It traces
`towerlite.models.SentenceEncoder.module`, the same module the PyTorch reference runs.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

OPSET = 17
INPUTS = ["input_ids", "attention_mask"]
OUTPUT = "sentence_embedding"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")



def export_fp32(encoder, out_path: Path, opset: int = OPSET) -> Path:
    """Trace `encoder.module` to `out_path` (written atomically: temp file, then rename)."""
    import torch

    sample = encoder.tokenizer(["a short text", "a somewhat longer text to trace the padding"],
                               padding=True, return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"])
    tmp = out_path.with_name(out_path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about python control flow in HF code
        torch.onnx.export(
            encoder.module.cpu(), args, str(tmp), dynamo=False, opset_version=opset,
            input_names=INPUTS, output_names=[OUTPUT], do_constant_folding=True,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                          "attention_mask": {0: "batch", 1: "sequence"}, OUTPUT: {0: "batch"}})
    tmp.replace(out_path)
    return out_path


def copy_tokenizer(model_folder: Path, out_dir: Path) -> list[str]:
    """Put the tokenizer files beside the ONNX files; tokenizer.json is required."""
    if not (model_folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(model_folder)).save_pretrained(str(out_dir))
    copied = []
    for name in TOKENIZER_FILES:
        if (model_folder / name).is_file():
            shutil.copyfile(model_folder / name, out_dir / name)
            copied.append(name)
    return copied
