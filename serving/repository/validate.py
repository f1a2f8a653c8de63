"""Parse a repository's configs against Triton's ModelConfig protobuf and check that the
ensembles' steps fit the models they name."""

from __future__ import annotations

from pathlib import Path

from towerlite.errors import TowerliteError


def parse_config(text: str, source: str = "config.pbtxt"):
    """ModelConfig protobuf of a config.pbtxt; TowerliteError with the parser's line:column."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise TowerliteError(f"{source}: not a valid Triton model config: {exc}") from None


def validate_repository(root: Path) -> dict[str, object]:
    """Parse every */config.pbtxt, check names match folders and ensemble steps name models of
    the repository with matching tensors. Returns {model name: ModelConfig}."""
    root = Path(root)
    configs = {}
    for path in sorted(root.glob("*/config.pbtxt")):
        cfg = parse_config(path.read_text(), str(path))
        if cfg.name and cfg.name != path.parent.name:
            raise TowerliteError(f"{path}: name {cfg.name!r} differs from its folder "
                                 f"{path.parent.name!r}")
        configs[path.parent.name] = cfg
    if not configs:
        raise TowerliteError(f"{root}: no */config.pbtxt found")
    for name, cfg in configs.items():
        if cfg.platform != "ensemble":
            continue
        for step in cfg.ensemble_scheduling.step:
            target = configs.get(step.model_name)
            if target is None:
                raise TowerliteError(f"{root / name / 'config.pbtxt'}: step model "
                                     f"{step.model_name!r} is not in the repository")
            inputs = {i.name for i in target.input}
            outputs = {o.name for o in target.output}
            for key in step.input_map:
                if key not in inputs:
                    raise TowerliteError(f"{root / name / 'config.pbtxt'}: {step.model_name} has "
                                         f"no input {key!r}")
            for key in step.output_map:
                if key not in outputs:
                    raise TowerliteError(f"{root / name / 'config.pbtxt'}: {step.model_name} has "
                                         f"no output {key!r}")
    return configs
