"""Triton python model for the `portable` flavor's `user_encoder` / `item_encoder`:
input_ids, attention_mask (int64) → sentence_embedding (float32, L2-normalized in the graph).

Runs inside Triton's python backend: imports only numpy, onnxruntime and
triton_python_backend_utils. The requests Triton hands over together (dynamic batching, ragged:
requests of different widths batch together) are padded to the widest and run as one
onnxruntime call, then split back.

Parameters (config.pbtxt): THREADS (onnxruntime intra-op threads per instance), DEVICE (cpu, or
gpu: onnxruntime's CUDA provider on GPU 0, which needs onnxruntime-gpu in the stub's Python).
Files in the version folder: model.onnx (the export's chosen variant).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def caller_error(message):
    """The request's own mistake: INVALID_ARGUMENT over gRPC, 400 over HTTP, also through an
    ensemble (a bare TritonError is INTERNAL / 500: a server fault to retry, to page about)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # absent before Triton 2.39
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _session(path, options, device):
    if device not in ("cpu", "gpu"):
        raise ValueError(f"DEVICE must be cpu or gpu, not {device!r}")
    if device == "cpu":
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError(f"DEVICE gpu, but onnxruntime {ort.__version__} here has no CUDA "
                           "provider: install onnxruntime-gpu (towerlite's gpu extra) in the "
                           "Python the python backend runs")
    session = ort.InferenceSession(path, options, providers=["CUDAExecutionProvider",
                                                             "CPUExecutionProvider"])
    if session.get_providers()[0] != "CUDAExecutionProvider":  # CUDA/cuDNN libraries not found
        raise RuntimeError("DEVICE gpu, but onnxruntime could not start its CUDA provider (are "
                           "the CUDA and cuDNN libraries on LD_LIBRARY_PATH?)")
    return session


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(params.get("THREADS", "1"))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        path = os.path.join(folder, "model.onnx")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing (towerlite deploy writes it)")
        self.session = _session(path, so, params.get("DEVICE", "cpu"))
        self.feeds = {i.name for i in self.session.get_inputs()}
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        inputs, results = [], [None] * len(requests)
        for i, request in enumerate(requests):
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            if ids.shape != mask.shape:
                results[i] = caller_error(
                    f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} differ")
            else:
                inputs.append((i, ids, mask))
        for (i, _, _), emb in zip(inputs, self.embed([(ids, mask) for _, ids, mask in inputs])):
            results[i] = emb
        return [pb_utils.InferenceResponse(output_tensors=[], error=r)
                if isinstance(r, pb_utils.TritonError)
                else pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, r)])
                for r in results]

    def embed(self, batch):
        """[(input_ids, attention_mask)] → one embedding array (or TritonError) per request."""
        if not batch:
            return []
        try:
            return self._run(batch)
        except Exception:  # one bad request (e.g. an id outside the vocab): run each alone
            return [self._run_one(ids, mask) for ids, mask in batch]

    def _run(self, batch):
        """One onnxruntime call for the whole batch; the inputs allow ragged batches, so every
        request is padded to the widest (padding is masked out of the pooling)."""
        width = max(ids.shape[1] for ids, _ in batch)
        rows = sum(ids.shape[0] for ids, _ in batch)
        ids_all = np.zeros((rows, width), dtype=np.int64)
        mask_all = np.zeros((rows, width), dtype=np.int64)
        start = 0
        for ids, mask in batch:
            ids_all[start:start + ids.shape[0], :ids.shape[1]] = ids
            mask_all[start:start + ids.shape[0], :ids.shape[1]] = mask
            start += ids.shape[0]
        feed = {"input_ids": ids_all, "attention_mask": mask_all}
        emb = self.session.run(None, {k: v for k, v in feed.items() if k in self.feeds})[0]
        bounds = np.cumsum([ids.shape[0] for ids, _ in batch])[:-1]
        return [part.astype(np.float32, copy=False) for part in np.split(emb, bounds)]

    def _run_one(self, ids, mask):
        try:
            return self._run([(ids, mask)])[0]
        except Exception as exc:  # onnxruntime's own message: this request's inputs alone
            return caller_error(f"encoder: {exc}")  # fail (the batch without them ran)
