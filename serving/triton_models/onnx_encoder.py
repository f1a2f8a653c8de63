"""Triton python model for the `portable` flavor's `user_encoder` / `item_encoder`:
input_ids, attention_mask (int64) → sentence_embedding (float32, L2-normalized in the graph).

Runs inside Triton's python backend: imports only numpy, onnxruntime and
triton_python_backend_utils. The requests Triton hands over together (dynamic batching) are
grouped by padded width and each group runs as one onnxruntime call, then split back.

Parameters (config.pbtxt): THREADS (onnxruntime intra-op threads per instance).
Files in the version folder: model.onnx (the export's chosen variant).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


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
        self.session = ort.InferenceSession(path, so,
                                            providers=["CPUExecutionProvider"])
        self.feeds = {i.name for i in self.session.get_inputs()}
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        inputs = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            inputs.append((ids, mask))
        results = [None] * len(requests)
        widths = {}
        for i, (ids, mask) in enumerate(inputs):
            if ids.shape != mask.shape:
                results[i] = pb_utils.TritonError(
                    f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} differ")
            else:
                widths.setdefault(ids.shape[1], []).append(i)
        for members in widths.values():
            ids = np.concatenate([inputs[i][0] for i in members])
            mask = np.concatenate([inputs[i][1] for i in members])
            feed = {"input_ids": ids.astype(np.int64, copy=False),
                    "attention_mask": mask.astype(np.int64, copy=False)}
            try:
                emb = self.session.run(None, {k: v for k, v in feed.items() if k in self.feeds})[0]
            except Exception as exc:  # onnxruntime's own message, e.g. an id outside the vocab
                for i in members:
                    results[i] = pb_utils.TritonError(f"encoder: {exc}")
                continue
            start = 0
            for i in members:
                rows = inputs[i][0].shape[0]
                results[i] = emb[start:start + rows].astype(np.float32, copy=False)
                start += rows
        return [pb_utils.InferenceResponse(output_tensors=[], error=r)
                if isinstance(r, pb_utils.TritonError)
                else pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, r)])
                for r in results]
