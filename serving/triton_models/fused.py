"""Triton python models `recommend_fused` and `recommend_history_fused`: an ensemble's steps in
one python model, so a request crosses into a python backend stub once instead of two or three
times. The PATH parameter says which:

    text (recommend_fused, portable flavor)   tokenizer → user_encoder → scorer, as `recommend`
    history (recommend_history_fused)         history_encoder → history_scorer, as
                                              `recommend_history`

Runs inside Triton's python backend: imports only numpy and triton_python_backend_utils here,
and the repository's own model.py files of those steps, loaded from their folders beside this
one (the same code, the same tokenizer.json, model.onnx, catalog and item-table files: nothing
is copied). Every step is read at version RELEASE, the release this model serves (version
folders are releases); `towerlite release` and `towerlite catalog update` reload this model with
RELEASE set to the new one, after loading its steps' new versions.

Parameters (config.pbtxt): RELEASE, and the steps' own (MAX_LENGTH, BUCKETS, MAX_TEXT_BYTES,
THREADS, DEVICE, CATALOG_DIR, DEFAULT_K, MAX_K, INDEX; MAX_LEN, MAX_HISTORY, UNKNOWN_EXCLUDE).
Inputs and outputs: those of the ensemble it stands for.
"""

import importlib.util
import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _load(root, name, config, version):
    """The TritonPythonModel of the repository's model `name` at `version`, initialized with
    `config`."""
    folder = os.path.join(root, name)
    if not os.path.isfile(os.path.join(folder, version, "model.py")):
        raise FileNotFoundError(f"{os.path.join(folder, version)} has no model.py: release "
                                f"{version} is not (or no longer) in the repository")
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
        param = lambda name: own["parameters"].get(name, {}).get("string_value")  # noqa: E731
        self.history = param("PATH") == "history"
        version = param("RELEASE") or "1"
        if self.history:
            self.encoder, encoder_module = _load(root, "history_encoder", own, version)
            self.scorer, scorer_module = _load(root, "history_scorer", own, version)
            self.encoder_error = encoder_module.RequestError
        else:
            self.tokenizer, _ = _load(root, "tokenizer", own, version)
            self.encoder, _ = _load(root, "user_encoder", {
                **own, "output": [{"name": "sentence_embedding"}]}, version)
            self.scorer, scorer_module = _load(root, "scorer", own, version)
        self.request_options = scorer_module.request_options
        self.request_error = scorer_module.RequestError
        self.caller_error = scorer_module.caller_error  # INVALID_ARGUMENT / 400, as the steps'

    def execute(self, requests):
        results = self._history(requests) if self.history else self._text(requests)
        return [pb_utils.InferenceResponse(output_tensors=[], error=r)
                if isinstance(r, pb_utils.TritonError)
                else pb_utils.InferenceResponse(output_tensors=r) for r in results]

    def _text(self, requests):
        results, tokens = [None] * len(requests), []
        raws = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy() for r in requests]
        for i, out in enumerate(self.tokenizer.tokenize_batch(raws)):
            if isinstance(out, ValueError):
                results[i] = self.caller_error(f"tokenizer: {out}")
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
                results[i] = self.caller_error(f"scorer: {exc}")
        return results

    def _history(self, requests):
        results, parsed = [None] * len(requests), []
        for i, request in enumerate(requests):
            try:
                parsed.append((i, *self.encoder._rows(request)))
            except self.encoder_error as exc:
                results[i] = self.caller_error(f"history_encoder: {exc}")
        # every request's history through the sequence model in one batch, then each one's top-k
        vectors = self.encoder._encode([[r for _, r in known] for _, known, _, _ in parsed]) \
            if parsed else []
        for (i, known, skipped, extra), vector in zip(parsed, vectors):
            k, domain, _, min_score = self.request_options(requests[i])
            # what the ensemble's EXCLUDE_ALL carries: the history's rows (found by the encoder
            # in the same version's row order: not looked up again) and the EXCLUDE ids
            exclude = np.array(extra, dtype=object) if extra else None
            try:
                results[i] = self.scorer.search(vector, k, domain, exclude, min_score,
                                                exclude_rows=[r for _, r in known]) + [
                    pb_utils.Tensor("SKIPPED", np.array([skipped], dtype=object).reshape(1, -1))]
            except self.request_error as exc:
                results[i] = self.caller_error(f"history_scorer: {exc}")
        return results
