"""`towerlite export`: any HF encoder folder → ONNX variants, parity-gated, with a report.

    out/model.onnx, model_opt.onnx, model_int8_dynamic.onnx, model_int8_static.onnx,
        model_fp16.onnx
    out/tokenizer.json (+ the other tokenizer files)
    out/export_report.json   source, settings, file sizes, parity, in-process speed, versions
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import version
from pathlib import Path

from towerlite import onnx_variants as V
from towerlite.errors import TowerliteError
from towerlite.evaluation.parity import parity
from towerlite.files import ensure_writable_dir, write_json_atomic
from towerlite.machine import cpu_info
from towerlite.runtime import VARIANT_FILES

# int8_static (QDQ) stays available by name; it measured mean cosine ≈0.9 on MiniLM, under the gate
DEFAULT_VARIANTS = ("fp32", "opt", "int8_dynamic", "fp16")
# the parity gate: minimum mean cosine to the PyTorch model's embedding, per variant
DEFAULT_MIN_COSINE = {"fp32": 0.9999, "opt": 0.9999, "int8_dynamic": 0.99, "int8_static": 0.99,
                      "fp16": 0.999}

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    model: str
    out: Path
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    max_length: int | None = None  # None: the model's own max_seq_length, at most 128
    parity_texts_per_source: int = 64  # held-out texts, every domain present
    calibration_texts_per_source: int = 32  # training-part texts, for static INT8
    min_cosine: dict = field(default_factory=lambda: dict(DEFAULT_MIN_COSINE))
    threads: int = 2
    measure_speed: bool = True


class ParityError(TowerliteError):
    pass


def check_config(cfg: ExportConfig) -> None:
    """Everything that can be wrong before any long work starts."""
    unknown = [v for v in cfg.variants if v not in VARIANT_FILES]
    if unknown:
        raise TowerliteError(f"unknown variant(s) {unknown}; known: {', '.join(VARIANT_FILES)}")
    if not cfg.variants:
        raise TowerliteError("no variants asked for")
    ensure_writable_dir(cfg.out)
    if cfg.max_length is not None and cfg.max_length < 8:
        raise TowerliteError("max_length must be at least 8 tokens")


def _texts(cfg: ExportConfig) -> tuple[list[str], list[str], dict]:
    from towerlite.data import load_corpus
    from towerlite.data.splits import balanced_sample

    log.info("loading the real multi-domain corpus for parity and calibration texts")
    records = load_corpus()
    held = balanced_sample(records, cfg.parity_texts_per_source, seed=0, heldout=True)
    calib = balanced_sample(records, cfg.calibration_texts_per_source, seed=1, heldout=False)
    per_source = dict(Counter(r.source for r in held))
    return [r.text for r in held], [r.text for r in calib], per_source


def gate(name: str, result: dict, minimum: float) -> str | None:
    """None when the variant passes; otherwise the message saying by how much it missed."""
    if result["mean_cosine"] >= minimum:
        return None
    return (f"{name}: mean cosine {result['mean_cosine']:.4f} < {minimum} "
            f"(short by {minimum - result['mean_cosine']:.4f}; "
            f"min cosine {result['min_cosine']:.4f})")



def run(cfg: ExportConfig) -> dict:
    """Export, build, check and measure every variant; write and return the report."""
    from towerlite.models import SentenceEncoder
    from towerlite.runtime import OnnxEncoder, load_tokenizer, pad_batch

    from .onnx_export import copy_tokenizer, export_fp32
    from .speed import latency, throughput

    check_config(cfg)
    started = time.monotonic()
    encoder = SentenceEncoder(cfg.model, attn_implementation="eager")
    folder = Path(encoder.source)
    if cfg.max_length is None:  # a model fine-tuned at 64 tokens is served at 64
        cfg = replace(cfg, max_length=min(encoder.pipeline.max_seq_length, 128))
    texts, calib_texts, per_source = _texts(cfg)
    log.info(f"PyTorch reference on {len(texts)} held-out texts")
    reference = encoder.encode(texts, max_length=cfg.max_length)

    needed = set(cfg.variants)
    for variant in cfg.variants:  # a variant needs the file it is built from
        while variant in V.SOURCES:
            variant = V.SOURCES[variant]
            needed.add(variant)
    out = cfg.out
    settings: dict[str, dict] = {}
    fp32_path = out / VARIANT_FILES["fp32"]
    log.info(f"exporting {folder} → {fp32_path}")
    export_fp32(encoder, fp32_path)
    tokenizer_files = copy_tokenizer(folder, out)
    restore = V.quiet_onnxruntime_logs()
    try:
        config = encoder.module.transformer.config
        model_type = ("bert" if config.model_type in ("bert", "mpnet", "roberta", "xlm-roberta")
                      else config.model_type)
        if "opt" in needed:
            log.info("optimizing (transformer fusions)")
            settings["opt"] = {"fused": V.optimize(fp32_path, out / VARIANT_FILES["opt"],
                                                   config.num_attention_heads, config.hidden_size,
                                                   model_type)}
        if "int8_dynamic" in needed:
            log.info("quantizing: dynamic INT8")
            settings["int8_dynamic"] = V.int8_dynamic(fp32_path,
                                                      out / VARIANT_FILES["int8_dynamic"])
        if "int8_static" in needed:
            log.info(f"quantizing: static INT8 (QDQ), calibrating on {len(calib_texts)} "
                     "corpus texts")
            tok, pad_id = load_tokenizer(out / "tokenizer.json", cfg.max_length)
            tokens = [encoding.ids for encoding in tok.encode_batch(calib_texts)]
            batches = []
            for i in range(0, len(tokens), 16):
                ids, mask = pad_batch(tokens[i:i + 16], pad_id)
                batches.append({"input_ids": ids, "attention_mask": mask})
            settings["int8_static"] = V.int8_static(fp32_path, out / VARIANT_FILES["int8_static"],
                                                    batches)
        if "fp16" in needed:
            log.info("converting: fp16")
            settings["fp16"] = V.fp16(out / VARIANT_FILES["opt"], out / VARIANT_FILES["fp16"])
    finally:
        restore()

    report_variants, failures = {}, []
    fp32_emb = None
    for name in [v for v in VARIANT_FILES if v in needed]:
        path = out / VARIANT_FILES[name]
        enc = OnnxEncoder(path, out / "tokenizer.json", cfg.max_length, threads=cfg.threads)
        emb = enc.encode(texts)
        if name == "fp32":
            fp32_emb = emb
        entry = {"file": path.name, "bytes": path.stat().st_size,
                 "settings": settings.get(name, {}),
                 "parity_vs_pytorch": parity(reference, emb),
                 "parity_vs_onnx_fp32": parity(fp32_emb, emb) if fp32_emb is not None else None,
                 "min_mean_cosine": cfg.min_cosine.get(name, 0.99)}
        failure = gate(name, entry["parity_vs_pytorch"], entry["min_mean_cosine"])
        entry["passed"] = failure is None
        if failure:
            failures.append(failure)
        if cfg.measure_speed:
            log.info(f"measuring {name}")
            batch32 = throughput(lambda batch, onnx=enc: onnx.encode(batch, 32), texts)
            entry["speed"] = {
                "sentences_per_s_batch32": round(batch32, 1),
                "batch1": latency(lambda batch, onnx=enc: onnx.encode(batch, 1), texts, n=100)}
        report_variants[name] = entry
        mean_cos = entry["parity_vs_pytorch"]["mean_cosine"]
        log.info(f"  {name:13s} {entry['bytes'] / 1e6:7.1f} MB  mean cos {mean_cos:.5f}"
                 f"  {'ok' if failure is None else 'FAILED'}"
                 + (f"  {entry['speed']['sentences_per_s_batch32']} sent/s" if cfg.measure_speed
                    else ""))


    report = {
        "source_model": encoder.source, "pipeline": asdict(encoder.pipeline), "dim": encoder.dim,
        "graph": {"inputs": ["input_ids", "attention_mask"], "output": "sentence_embedding",
                  "opset": 17, "pooling_inside": True, "normalized": encoder.pipeline.normalize},
        "tokenizer_files": tokenizer_files, "max_length": cfg.max_length, "threads": cfg.threads,
        "parity_texts": {"count": len(texts), "per_source": per_source,
                         "split": "held-out (towerlite.data.splits)"},
        "variants": report_variants, "failures": failures,
        "machine": cpu_info(),  # model, vector flags (int8 speed/rounding depend on them), cores
        "versions": {p: version(p)
                     for p in ("torch", "transformers", "onnx", "onnxruntime", "optimum")},

        "seconds": round(time.monotonic() - started, 1),
    }
    write_json_atomic(out / "export_report.json", report)
    if failures:
        raise ParityError("parity gate failed: " + "; ".join(failures)
                          + f" (report: {out / 'export_report.json'})")
    return report
