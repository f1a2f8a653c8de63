"""The model repository without a server: every config of both flavors parses as Triton's
ModelConfig, the committed repository is what the generator writes, each python model has one
source and imports only what a stock container has, deploy's spec settings are checked and a
broken config is a clear error."""

from __future__ import annotations

import ast
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from towerlite.errors import TowerliteError
from towerlite.serving.repository import (
    FLAVORS,
    MODEL_CODE,
    PYTHON_MODELS,
    RepositorySpec,
    model_configs,
    parse_config,
    validate_repository,
    write_code,
)

ROOT = Path(__file__).resolve().parent.parent


SPECS = {"default": RepositorySpec(),
         "teacher_items_trt": replace(RepositorySpec(), dim=768, item_tokenizer=True,
                                      tensorrt=True),
         "native_cpu": replace(RepositorySpec(), native_kind="cpu")}


@pytest.mark.parametrize("flavor", FLAVORS)
@pytest.mark.parametrize("spec_name", list(SPECS))
def test_every_config_parses_as_model_config(flavor, spec_name):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    spec = SPECS[spec_name]
    configs = model_configs(spec, flavor)
    expected = {"tokenizer", "user_encoder", "item_encoder", "scorer", "recommend", "embed_items"}
    expected |= {"recommend_fused"} if flavor == "portable" else set()
    assert set(configs) == expected | ({"item_tokenizer"} if spec.item_tokenizer else set())
    parsed = {n: text_format.Parse(t, model_config_pb2.ModelConfig()) for n, t in configs.items()}
    for name, cfg in parsed.items():
        assert cfg.name == name
        assert cfg.max_batch_size == spec.max_batch_size
    for name in ("user_encoder", "item_encoder"):
        enc = parsed[name]
        assert enc.HasField("dynamic_batching") and len(enc.model_warmup) == 1
        assert enc.output[0].dims == [spec.dim]
        if flavor == "native" and spec.native_kind == "cpu":  # a CPU-only node
            assert enc.platform == "onnxruntime_onnx" and enc.default_model_filename == "model.onnx"
            group = enc.instance_group[0]
            assert group.kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
            user = name == "user_encoder"
            assert group.count == (spec.user_encoder_instances if user
                                   else spec.item_encoder_instances)
            assert enc.parameters["intra_op_thread_count"].string_value == str(
                spec.user_encoder_threads if user else spec.item_encoder_threads)
            assert enc.parameters["execution_mode"].string_value == "0"  # sequential
            assert not enc.optimization.execution_accelerators.gpu_execution_accelerator
        elif flavor == "native":
            assert enc.platform == "onnxruntime_onnx" and enc.default_model_filename == "model.onnx"
            assert enc.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
            accel = enc.optimization.execution_accelerators.gpu_execution_accelerator
            assert [a.name for a in accel] == (["tensorrt"] if spec.tensorrt else [])
        else:
            assert enc.backend == "python" and not enc.platform
            # ragged: requests of different widths batch together (the model pads them)
            assert all(i.allow_ragged_batch for i in enc.input)
            assert enc.parameters["DEVICE"].string_value == "cpu"
    if flavor == "portable":  # the fused model takes and returns exactly what recommend does
        fused, ensemble = parsed["recommend_fused"], parsed["recommend"]
        assert fused.backend == "python" and len(fused.model_warmup) == 1
        assert list(fused.input) == list(ensemble.input)
        assert list(fused.output) == list(ensemble.output)
    scorer = parsed["scorer"]
    assert {i.name for i in scorer.input if i.optional} == {"K", "DOMAIN", "EXCLUDE", "MIN_SCORE"}
    # every model that queues (all but the ensembles) drops requests whose timeout expired there
    queued = {n: c for n, c in parsed.items() if c.platform != "ensemble"}
    assert {"tokenizer", "user_encoder", "scorer"} <= set(queued)
    for name, cfg in queued.items():
        policy = cfg.dynamic_batching.default_queue_policy
        assert cfg.HasField("dynamic_batching"), name
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT, name
        assert policy.allow_timeout_override, name
        assert policy.default_timeout_microseconds == spec.queue_timeout_us, name
    assert parsed["recommend"].platform == "ensemble"
    steps = [s.model_name for s in parsed["embed_items"].ensemble_scheduling.step]
    assert steps == ["item_tokenizer" if spec.item_tokenizer else "tokenizer", "item_encoder"]


def test_committed_repository_is_what_the_generator_writes(tmp_path):
    """model_repository/ in git holds exactly the configs of the default spec, no model.py
    copy (regenerate: python -m towerlite.serving.repository --out model_repository)."""
    for flavor in FLAVORS:
        written = write_code(tmp_path / flavor, RepositorySpec(), flavor, code=False)
        validate_repository(ROOT / "model_repository" / flavor)
        for path in written:
            committed = ROOT / "model_repository" / flavor / path.relative_to(tmp_path / flavor)
            assert committed.is_file(), f"{committed} is missing"
            assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale"
        committed = {p.relative_to(ROOT / "model_repository" / flavor)
                     for p in (ROOT / "model_repository" / flavor).rglob("*") if p.is_file()}
        assert committed == {p.relative_to(tmp_path / flavor) for p in written}


def test_deploy_writes_each_python_model_from_its_one_source(tmp_path):
    written = write_code(tmp_path, RepositorySpec(), "portable")
    code = [p for p in written if p.name == "model.py"]
    assert {p.parent.parent.name for p in code} == \
        set(PYTHON_MODELS["portable"]) - {"item_tokenizer"}
    for path in code:
        source = MODEL_CODE / PYTHON_MODELS["portable"][path.parent.parent.name]
        assert path.read_bytes() == source.read_bytes()


# + importlib (standard library): recommend_fused loads the repository's other model.py files
ALLOWED_IMPORTS = {"json", "os", "importlib", "numpy", "onnxruntime", "tokenizers",
                   "triton_python_backend_utils"}


@pytest.mark.parametrize("source", sorted(p.name for p in MODEL_CODE.glob("*.py")))
def test_triton_models_import_only_what_a_stock_container_has(source):
    """numpy, onnxruntime, tokenizers, triton_python_backend_utils (+ json, os) at module level;
    faiss only inside a function, for catalogs that ship an index."""
    tree = ast.parse((MODEL_CODE / source).read_text())
    top, lazy = set(), set()
    for node in ast.walk(tree):
        names = set()
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        (top if node in tree.body else lazy).update(names)
    assert top <= ALLOWED_IMPORTS, top - ALLOWED_IMPORTS
    assert lazy <= {"faiss"}, lazy


def test_deploy_spec_settings_are_checked():
    from towerlite.serving.cli import spec_settings

    got = spec_settings(["user_encoder_instances=1", "buckets=[16,32]", "ragged_batches=false"])
    assert got == {"user_encoder_instances": 1, "buckets": (16, 32), "ragged_batches": False}
    spec = replace(RepositorySpec(), **got)
    assert 'string_value: "16,32,128"' in model_configs(spec, "portable")["tokenizer"]
    assert "allow_ragged_batch" not in model_configs(spec, "portable")["user_encoder"]
    for bad, message in (("no_such_field=1", "expected FIELD=JSON with FIELD one of"),
                         ("dim=768", "expected FIELD=JSON"),  # set by the export, not by hand
                         ("user_encoder_threads=two", "is not JSON")):
        with pytest.raises(TowerliteError, match=message):
            spec_settings([bad])


def test_broken_config_is_a_clear_error(tmp_path):
    write_code(tmp_path, RepositorySpec(), "portable")
    cfg = tmp_path / "scorer" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("max_batch_size: 64", "max_batch_size: sixty-four"))
    with pytest.raises(TowerliteError, match=r"scorer/config.pbtxt: not a valid Triton model "
                                             r"config: \d+:\d+"):
        validate_repository(tmp_path)
    write_code(tmp_path, RepositorySpec(), "portable")
    shutil.rmtree(tmp_path / "user_encoder")
    with pytest.raises(TowerliteError, match="step model 'user_encoder' is not in the repository"):
        validate_repository(tmp_path)
    with pytest.raises(TowerliteError, match="not a valid Triton model config"):
        parse_config('name: "x" input [ { name: "A" data_type: TYPE_NOPE dims: [1] } ]')
