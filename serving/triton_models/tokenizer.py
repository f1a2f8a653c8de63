"""Triton python model `tokenizer`: TEXT (UTF-8 bytes) → input_ids, attention_mask (int64).

Runs inside Triton's python backend: imports only numpy, tokenizers and
triton_python_backend_utils. Each request is padded to the smallest length bucket that holds its
longest text (e.g. 16/32/64/128 tokens), so requests of similar length have the same shape and
the encoder's dynamic batcher can put them in one batch. Texts longer than MAX_LENGTH tokens are
truncated; texts over MAX_TEXT_BYTES bytes, empty texts and non-UTF-8 bytes are rejected with an
error that names the problem (the other requests of the batch are served).

Parameters (config.pbtxt): MAX_LENGTH, BUCKETS ("16,32,64,128"), MAX_TEXT_BYTES.
Files in the version folder: tokenizer.json.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer


def caller_error(message):
    """The request's own mistake: INVALID_ARGUMENT over gRPC, 400 over HTTP, also through an
    ensemble (a bare TritonError is INTERNAL / 500: a server fault to retry, to page about)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # absent before Triton 2.39
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


def _params(model_config):
    return {k: v["string_value"] for k, v in model_config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = _params(config)
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.max_length = int(params.get("MAX_LENGTH", "128"))
        self.buckets = sorted({min(int(b), self.max_length)
                               for b in params.get("BUCKETS", "").split(",") if b.strip()}
                              | {self.max_length})
        self.max_text_bytes = int(params.get("MAX_TEXT_BYTES", "65536"))
        path = os.path.join(folder, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing (towerlite deploy writes it)")
        tok = Tokenizer.from_file(path)
        self.pad_id = (tok.padding or {}).get("pad_id", 0)
        tok.no_padding()
        tok.enable_truncation(max_length=self.max_length)
        self.tokenizer = tok

    def _texts(self, raw) -> list[str]:
        texts = []
        for i, value in enumerate(raw.reshape(-1)):
            if not isinstance(value, bytes):
                value = str(value).encode()
            if len(value) > self.max_text_bytes:
                raise ValueError(f"text {i} is {len(value):,} bytes; the limit is "
                                 f"{self.max_text_bytes:,} bytes (MAX_TEXT_BYTES)")
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"text {i} is not valid UTF-8 ({exc.reason} at byte "
                                 f"{exc.start})") from None
            if not text.strip():
                raise ValueError(f"text {i} is empty")
            texts.append(text)
        return texts

    def bucket(self, length):
        for b in self.buckets:
            if length <= b:
                return b
        return self.buckets[-1]

    def pad(self, token_lists):
        """input_ids, attention_mask of one request, padded to the bucket of its longest text."""
        width = self.bucket(max(len(t) for t in token_lists))
        ids = np.full((len(token_lists), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(token_lists), width), dtype=np.int64)
        for r, t in enumerate(token_lists):
            ids[r, :len(t)] = t
            mask[r, :len(t)] = 1
        return ids, mask

    def tokenize_batch(self, raws):
        """Each request's TEXT array → (input_ids, attention_mask), or a ValueError naming its
        bad text; every request's texts go through one encode_batch call."""
        parsed, all_texts = [], []
        for raw in raws:
            try:
                texts = self._texts(raw)
                parsed.append((len(all_texts), len(texts)))
                all_texts.extend(texts)
            except ValueError as exc:
                parsed.append(exc)
        encodings = self.tokenizer.encode_batch(all_texts) if all_texts else []
        return [item if isinstance(item, ValueError) else
                self.pad([e.ids for e in encodings[item[0]:item[0] + item[1]]]) for item in parsed]

    def execute(self, requests):
        raws = [pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse(output_tensors=[], error=caller_error(
                    f"tokenizer: {out}")) if isinstance(out, ValueError)
                else pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("input_ids", out[0]),
                    pb_utils.Tensor("attention_mask", out[1])])
                for out in self.tokenize_batch(raws)]
