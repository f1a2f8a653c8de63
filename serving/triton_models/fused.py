"""Triton python model `recommend_fused` (portable flavor): what the `recommend` ensemble does
(tokenizer → user_encoder → scorer), in one python model, so a request crosses into a python
backend stub once instead of three times.

Runs inside Triton's python backend: imports only numpy and triton_python_backend_utils here,
and the repository's own `tokenizer`, `user_encoder` and `scorer` model.py files, loaded from
their folders beside this one (the same code, the same tokenizer.json, model.onnx and catalog
files: nothing is copied). The catalog is the scorer's version SCORER_VERSION, or its newest
version folder when the parameter is absent; `towerlite catalog update` reloads this model after
the scorer with SCORER_VERSION set to the new version.

Parameters (config.pbtxt): the three models' own (MAX_LENGTH, BUCKETS, MAX_TEXT_BYTES, THREADS,
DEVICE, CATALOG_DIR, DEFAULT_K, MAX_K, INDEX). Inputs and outputs: those of `recommend`.
"""

import importlib.util
import json
import os

import triton_python_backend_utils as pb_utils


def _newest_version(folder):
    versions = [int(v) for v in os.listdir(folder) if v.isdigit()
                and os.path.isfile(os.path.join(folder, v, "model.py"))]
    if not versions:
        raise FileNotFoundError(f"{folder} has no version folder with a model.py")
    return str(max(versions))


def _load(root, name, config, version=None):
    """The TritonPythonModel of the repository's model `name`, initialized with `config`."""
    folder = os.path.join(root, name)
    version = version or _newest_version(folder)
    spec = importlib.util.spec_from_file_location(f"towerlite_fused_{name}",
                                                  os.path.join(folder, version, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": folder,
                      "model_version": version})
    return model, module


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        root = os.path.dirname(os.path.normpath(args["model_repository"]))
        own = {"parameters": config.get("parameters", {})}
        self.tokenizer, _ = _load(root, "tokenizer", own, "1")
        self.encoder, _ = _load(root, "user_encoder", {
            **own, "output": [{"name": "sentence_embedding"}]}, "1")
        version = own["parameters"].get("SCORER_VERSION", {}).get("string_value")
        self.scorer, scorer_module = _load(root, "scorer", own, version)
        self.request_options = scorer_module.request_options
        self.request_error = scorer_module.RequestError

    def execute(self, requests):
        results, tokens = [None] * len(requests), []
        raws = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy() for r in requests]
        for i, out in enumerate(self.tokenizer.tokenize_batch(raws)):
            if isinstance(out, ValueError):
                results[i] = pb_utils.TritonError(f"tokenizer: {out}")
            else:
                tokens.append((i, *out))
        # every request's user text through the encoder in one batch, then each one's top-k
        embeddings = self.encoder.embed([(ids, mask) for _, ids, mask in tokens])
        for (i, _, _), emb in zip(tokens, embeddings):
            if isinstance(emb, pb_utils.TritonError):
                results[i] = emb
                continue
            try:
                results[i] = self.scorer.search(emb, *self.request_options(requests[i]))
            except self.request_error as exc:
                results[i] = pb_utils.TritonError(f"scorer: {exc}")
        return [pb_utils.InferenceResponse(output_tensors=[], error=r)
                if isinstance(r, pb_utils.TritonError)
                else pb_utils.InferenceResponse(output_tensors=r) for r in results]
