"""One description of the served model set → both flavors' Triton model repositories.

    tokenizer ─► user_encoder ─► scorer   ensemble `recommend`: TEXT → ITEM_IDS, SCORES, DOMAINS
    [item_tokenizer] ─► item_encoder      ensemble `embed_items`: TEXT → EMBEDDING
    recommend_fused (portable only)       `recommend` in one python model (same code and files)

`RepositorySpec` holds every setting; `model_configs(spec, flavor)` renders each model's
config.pbtxt text for `portable` (encoders as python models running onnxruntime; runs on the
pip-installed Triton) or `native` (encoders on the `onnxruntime_onnx` platform, GPU instances,
optional TensorRT). `write_code` writes configs and model.py files; `validate_repository` parses
every config.pbtxt against Triton's ModelConfig protobuf. Weights and the catalog are written by
`serving.deploy`.

Modules: spec (RepositorySpec, the python models), configs (config.pbtxt text), validate,
write. Regenerate the committed `model_repository/` (configs only: the model.py files have one
source, serving/triton_models/, and deploy copies them):

    python -m towerlite.serving.repository --out model_repository
"""

from .configs import (
                      FUSED_WARMUP_TEXT,
                      encoder_config,
                      fused_config,
                      history_encoder_config,
                      history_fused_config,
                      model_configs,
                      recommend_config,
                      recommend_history_config,
                      scorer_config,
                      tokenizer_config,
)
from .spec import (
                      FLAVORS,
                      FUSED,
                      HISTORY_FUSED,
                      HISTORY_MODELS,
                      MODEL_CODE,
                      PYTHON_MODELS,
                      RepositorySpec,
)
from .validate import parse_config, validate_repository
from .write import write_code

__all__ = ["FLAVORS", "FUSED", "FUSED_WARMUP_TEXT", "HISTORY_FUSED", "HISTORY_MODELS", "MODEL_CODE",
           "PYTHON_MODELS", "RepositorySpec", "encoder_config", "fused_config",
           "history_encoder_config", "history_fused_config", "model_configs", "parse_config",
           "recommend_config", "recommend_history_config", "scorer_config", "tokenizer_config",
           "validate_repository", "write_code"]
