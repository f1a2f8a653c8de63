"""config.pbtxt text of each model, per flavor: `model_configs(spec, flavor)`. Rendered as text
(not through ModelConfig + text_format) so each setting keeps the comment that says why; every
rendered config is parsed against Triton's ModelConfig protobuf by `validate_repository`."""

from __future__ import annotations

from towerlite.errors import TowerliteError

from .spec import FLAVORS, FUSED, HISTORY_FUSED, RepositorySpec


def _io(kind: str, name: str, dtype: str, dims: list[int], optional: bool = False,
        comment: str = "", ragged: bool = False) -> str:
    note = f"  # {comment}" if comment else ""
    opt = "\n    optional: true" if optional else ""
    opt += "\n    allow_ragged_batch: true" if ragged else ""
    return (f"  {{{note}\n    name: \"{name}\"\n    data_type: {dtype}\n"
            f"    dims: [ {', '.join(map(str, dims))} ]{opt}\n  }}")


def _block(kind: str, entries: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def _params(values: dict[str, object]) -> str:
    return "\n".join(f"parameters {{ key: \"{k}\" value: {{ string_value: \"{v}\" }} }}"
                     for k, v in values.items())


def _dynamic(spec: RepositorySpec, delay_us: int, preferred: list[int]) -> str:
    pref = f"\n  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else ""
    # a request still queued when its timeout expires is rejected, not run: a request's own
    # `timeout` (the client sends its deadline) may only shorten the default, so the default is
    # the ceiling for requests that send none (towerlite bench faults, deadline)
    policy = ("\n  # drop work whose caller has given up: the request's timeout (µs), at most "
              "the default\n  default_queue_policy {\n    timeout_action: REJECT\n"
              f"    default_timeout_microseconds: {spec.queue_timeout_us}\n"
              "    allow_timeout_override: true\n  }")
    return (f"dynamic_batching {{{pref}\n  max_queue_delay_microseconds: {delay_us}{policy}\n}}")


# the release a repository serves: every versioned model (tokenizers, encoders, scorers,
# history models) holds its files of release R in version folder R and serves only the versions
# its policy names; the ensembles and fused models name R too. `towerlite release` and
# `towerlite catalog update` write R+1 and rewrite these lines (serving/release/), so a server
# (re)started on the folder serves one release, never the newest folder of each model
FIRST_RELEASE = 1


def version_policy(versions: tuple[int, ...] = (FIRST_RELEASE,)) -> str:
    return ("# the release(s) served (towerlite release rewrites this line)\n"
            f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, versions))} ] }} }}")


def _instances(count: int, kind: str = "KIND_CPU") -> str:
    return f"instance_group [ {{ count: {count}, kind: {kind} }} ]"


def _header(name: str, what: str, backend: str | None = None, platform: str | None = None,
            max_batch_size: int = 0) -> str:
    lines = [f"# {name}: {what}", "# written by `towerlite deploy` (serving/repository/); "
             "edit the spec there, not this file", f"name: \"{name}\""]
    if backend:
        lines.append(f"backend: \"{backend}\"")
    if platform:
        lines.append(f"platform: \"{platform}\"")
    lines.append(f"max_batch_size: {max_batch_size}")
    return "\n".join(lines)


def _buckets(spec: RepositorySpec, flavor: str) -> list[int]:
    chosen = spec.buckets if flavor == "portable" else spec.native_buckets
    return sorted({b for b in chosen if b < spec.max_length} | {spec.max_length})


def tokenizer_config(spec: RepositorySpec, name: str = "tokenizer",
                     flavor: str = "portable") -> str:
    which = "item" if name == "item_tokenizer" else "user (and item)"
    return "\n".join([
        _header(name, f"{which} text → input_ids, attention_mask, padded to length buckets "
                "so requests of similar length batch together", backend="python",
                max_batch_size=spec.max_batch_size),
        _block("input", [_io("input", "TEXT", "TYPE_STRING", [1], comment="UTF-8 text")]),
        _block("output", [_io("output", "input_ids", "TYPE_INT64", [-1]),
                          _io("output", "attention_mask", "TYPE_INT64", [-1])]),
        _dynamic(spec, 0, []),
        _instances(spec.tokenizer_instances),
        version_policy(),
        _params({"MAX_LENGTH": spec.max_length,
                 "BUCKETS": ",".join(map(str, _buckets(spec, flavor))),
                 "MAX_TEXT_BYTES": spec.max_text_bytes}),
    ]) + "\n"


def _warmup(spec: RepositorySpec, flavor: str) -> str:
    width = _buckets(spec, flavor)[0]
    zeros = f"value: {{ data_type: TYPE_INT64 dims: [ {width} ] zero_data: true }}"
    return (f"model_warmup [ {{\n  name: \"bucket_{width}\"\n  batch_size: 1\n"
            f"  inputs {{ key: \"input_ids\" {zeros} }}\n"
            f"  inputs {{ key: \"attention_mask\" {zeros} }}\n}} ]")


def encoder_config(spec: RepositorySpec, name: str, flavor: str) -> str:
    tower = "user" if name == "user_encoder" else "item"
    delay = spec.user_queue_delay_us if tower == "user" else spec.item_queue_delay_us
    # portable: the python model pads a ragged batch itself
    ragged = flavor == "portable" and spec.ragged_batches
    io = [_block("input", [_io("input", "input_ids", "TYPE_INT64", [-1], ragged=ragged),
                           _io("input", "attention_mask", "TYPE_INT64", [-1], ragged=ragged)]),
          _block("output", [_io("output", "sentence_embedding", "TYPE_FP32", [spec.dim],
                                comment="L2-normalized inside the graph")])]
    preferred = [b for b in (4, 8, 16, 32) if b <= spec.max_batch_size]
    instances = spec.user_encoder_instances if tower == "user" else spec.item_encoder_instances
    threads = spec.user_encoder_threads if tower == "user" else spec.item_encoder_threads
    if flavor == "portable":
        return "\n".join([
            _header(name, f"{tower} tower: exported ONNX encoder run by onnxruntime inside a "
                    "python model (portable flavor)", backend="python",
                    max_batch_size=spec.max_batch_size),
            *io, _dynamic(spec, delay, preferred), _instances(instances), version_policy(),
            _params({"THREADS": threads, "DEVICE": _device(spec)}), _warmup(spec, flavor)]) + "\n"
    trt_params = (f"parameters {{ key: \"precision_mode\" value: \"{spec.tensorrt_precision}\" }}\n"
                  "        parameters { key: \"max_workspace_size_bytes\" value: \"1073741824\" }\n"
                  "        parameters { key: \"trt_engine_cache_enable\" value: \"true\" }")
    trt = ("optimization { execution_accelerators {\n  gpu_execution_accelerator: [ {\n"
           f"        name: \"tensorrt\"\n        {trt_params}\n  }} ]\n}}}}")
    if not spec.tensorrt:
        trt = ("# TensorRT execution accelerator (deploy --tensorrt writes it uncommented); the "
               "length buckets\n# bound how many engine shapes it builds:\n"
               + "\n".join("# " + line for line in trt.splitlines()))
    header = [_header(name, f"{tower} tower: exported ONNX encoder on Triton's onnxruntime "
                      "backend (native flavor" + (", CPU)" if _native_kind(spec) == "cpu" else ")"),
                      platform="onnxruntime_onnx", max_batch_size=spec.max_batch_size),
              "default_model_filename: \"model.onnx\""]
    if _native_kind(spec) == "cpu":
        if spec.tensorrt:
            raise TowerliteError("TensorRT is a GPU execution accelerator: "
                                 "not with native_kind cpu")
        # the onnxruntime backend's session options: the portable flavor's instances × threads
        # (2 × 1 user, 1 × 2 item on 2 cores), one inter-op thread and sequential execution (a
        # transformer is a chain: parallel execution only adds threads that spin), the arena on
        return "\n".join([
            *header, *io, _dynamic(spec, delay, preferred), _instances(instances, "KIND_CPU"),
            version_policy(),
            _params({"intra_op_thread_count": threads, "inter_op_thread_count": 1,
                     "execution_mode": 0, "enable_mem_arena": 1}),
            _warmup(spec, flavor)]) + "\n"
    return "\n".join([
        *header, *io, _dynamic(spec, delay, preferred),
        _instances(spec.gpu_instances, "KIND_GPU"), version_policy(), trt,
        _warmup(spec, flavor)]) + "\n"


def _index_load(spec: RepositorySpec) -> str:
    if spec.index_load not in ("mmap", "memory"):
        raise TowerliteError(f"index_load must be mmap or memory, not {spec.index_load!r}")
    return spec.index_load


def _native_kind(spec: RepositorySpec) -> str:
    if spec.native_kind not in ("cpu", "gpu"):
        raise TowerliteError(f"native_kind must be cpu or gpu, not {spec.native_kind!r}")
    return spec.native_kind


def _device(spec: RepositorySpec) -> str:
    if spec.encoder_device not in ("cpu", "gpu"):
        raise TowerliteError(f"encoder_device must be cpu or gpu, not {spec.encoder_device!r}")
    return spec.encoder_device


def scorer_config(spec: RepositorySpec, name: str = "scorer") -> str:
    dim = spec.history_dim if name == "history_scorer" else spec.dim
    what = ("the history tower's item table" if name == "history_scorer" else
            "the memory-mapped catalog (exact dot product = cosine)")
    return "\n".join([
        _header(name, f"top-k over {what}, "
                "with domain filter, exclusions and a minimum score", backend="python",
                max_batch_size=spec.max_batch_size),
        _block("input", [
            _io("input", "EMBEDDING", "TYPE_FP32", [dim], comment="user embedding"),
            _io("input", "K", "TYPE_INT32", [1], optional=True,
                comment=f"results wanted (default {spec.default_k}, at most {spec.max_k})"),
            _io("input", "DOMAIN", "TYPE_STRING", [1], optional=True,
                comment="only this domain (or several, comma-separated)"),
            _io("input", "EXCLUDE", "TYPE_STRING", [-1], optional=True,
                comment="item ids to leave out, e.g. the user's history"),
            _io("input", "MIN_SCORE", "TYPE_FP32", [1], optional=True,
                comment="only items scoring at least this"),
        ]),
        _block("output", [_io("output", "ITEM_IDS", "TYPE_STRING", [-1]),
                          _io("output", "SCORES", "TYPE_FP32", [-1]),
                          _io("output", "DOMAINS", "TYPE_STRING", [-1]), _release_output()]),
        # no waiting for a batch (each request is scored alone); here for the queue policy
        _dynamic(spec, 0, []),
        _instances(spec.history_instances if name == "history_scorer" else spec.scorer_instances),
        version_policy(),
        # INDEX "auto": use catalog/index.faiss when deploy built one (large catalogs);
        # "exact": always the exact matrix product. INDEX_LOAD "mmap": one copy of the index
        # in the page cache for every instance of the server (as fast as a copy each: 2.2
        # against 2.3 ms a query, measured)
        _params({"CATALOG_DIR": "catalog", "DEFAULT_K": spec.default_k, "MAX_K": spec.max_k,
                 "INDEX": spec.scorer_index, "INDEX_LOAD": _index_load(spec),
                 **({"UNKNOWN_EXCLUDE": "skip"} if name == "history_scorer" else {})}),
        ("model_warmup [ {\n  name: \"zero_user\"\n  batch_size: 1\n"
         f"  inputs {{ key: \"EMBEDDING\" value: {{ data_type: TYPE_FP32 dims: [ {dim} ] "
         "zero_data: true } }\n} ]"),
    ]) + "\n"


FUSED_WARMUP_TEXT = "[movie] Heat (1995). Action|Crime|Thriller"


def fused_config(spec: RepositorySpec) -> str:
    return "\n".join([
        _header(FUSED, "user text → top-k item ids, scores, domains: the `recommend` "
                "ensemble's three models in one python model (one backend crossing, not three)",
                backend="python", max_batch_size=spec.max_batch_size),
        *_recommend_io(spec), _dynamic(spec, spec.user_queue_delay_us, []),
        _instances(spec.fused_instances),
        _params({"RELEASE": FIRST_RELEASE, "MAX_LENGTH": spec.max_length,
                 "BUCKETS": ",".join(map(str, _buckets(spec, "portable"))),
                 "MAX_TEXT_BYTES": spec.max_text_bytes, "THREADS": spec.fused_threads,
                 "DEVICE": _device(spec),
                 "CATALOG_DIR": "catalog", "DEFAULT_K": spec.default_k, "MAX_K": spec.max_k,
                 "INDEX": spec.scorer_index, "INDEX_LOAD": _index_load(spec)}),
        # a real user text (warmup/user_text, written beside this config): empty text is refused
        ("model_warmup [ {\n  name: \"user_text\"\n  batch_size: 1\n"
         "  inputs { key: \"TEXT\" value: { data_type: TYPE_STRING dims: [ 1 ] "
         "input_data_file: \"user_text\" } }\n} ]"),
    ]) + "\n"


def _release_output() -> str:
    return _io("output", "RELEASE", "TYPE_INT64", [1],
               comment="the release that answered (every step of one release: never mixed)")


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    maps = [f"      input_map {{ key: \"{k}\" value: \"{v}\" }}" for k, v in inputs.items()]
    maps += [f"      output_map {{ key: \"{k}\" value: \"{v}\" }}" for k, v in outputs.items()]
    return "    {\n" + f"      model_name: \"{model}\"\n      model_version: {FIRST_RELEASE}\n" + \
        "\n".join(maps) + "\n    }"


def _option_inputs(ragged: bool = False) -> list[str]:
    """The optional inputs of `recommend`, `recommend_fused` and `recommend_history`."""
    return [_io("input", "K", "TYPE_INT32", [1], optional=True),
            _io("input", "DOMAIN", "TYPE_STRING", [1], optional=True),
            _io("input", "EXCLUDE", "TYPE_STRING", [-1], optional=True, ragged=ragged),
            _io("input", "MIN_SCORE", "TYPE_FP32", [1], optional=True)]


def _recommend_io(spec: RepositorySpec) -> list[str]:
    """Inputs and outputs of `recommend`, the same for the ensemble and the fused model."""
    return [
        _block("input", [
            _io("input", "TEXT", "TYPE_STRING", [1], comment="the user's text (history, profile)"),
            *_option_inputs()]),
        _block("output", [_io("output", "ITEM_IDS", "TYPE_STRING", [-1]),
                          _io("output", "SCORES", "TYPE_FP32", [-1]),
                          _io("output", "DOMAINS", "TYPE_STRING", [-1]), _release_output()])]


def recommend_config(spec: RepositorySpec) -> str:
    return "\n".join([
        _header("recommend", "user text → top-k item ids, scores, domains "
                "(tokenizer → user_encoder → scorer)", platform="ensemble",
                max_batch_size=spec.max_batch_size),
        *_recommend_io(spec),
        "ensemble_scheduling {\n  step [\n" + ",\n".join([
            _step("tokenizer", {"TEXT": "TEXT"},
                  {"input_ids": "user_input_ids", "attention_mask": "user_attention_mask"}),
            _step("user_encoder", {"input_ids": "user_input_ids",
                                   "attention_mask": "user_attention_mask"},
                  {"sentence_embedding": "user_embedding"}),
            _step("scorer", {"EMBEDDING": "user_embedding", "K": "K", "DOMAIN": "DOMAIN",
                             "EXCLUDE": "EXCLUDE", "MIN_SCORE": "MIN_SCORE"},
                  {"ITEM_IDS": "ITEM_IDS", "SCORES": "SCORES", "DOMAINS": "DOMAINS",
                   "RELEASE": "RELEASE"}),
        ]) + "\n  ]\n}",
    ]) + "\n"


def embed_items_config(spec: RepositorySpec) -> str:
    tokenizer = "item_tokenizer" if spec.item_tokenizer else "tokenizer"
    return "\n".join([
        _header("embed_items", f"item text → item embedding ({tokenizer} → item_encoder)",
                platform="ensemble", max_batch_size=spec.max_batch_size),
        _block("input", [_io("input", "TEXT", "TYPE_STRING", [1])]),
        _block("output", [_io("output", "EMBEDDING", "TYPE_FP32", [spec.dim])]),
        "ensemble_scheduling {\n  step [\n" + ",\n".join([
            _step(tokenizer, {"TEXT": "TEXT"},
                  {"input_ids": "item_input_ids", "attention_mask": "item_attention_mask"}),
            _step("item_encoder", {"input_ids": "item_input_ids",
                                   "attention_mask": "item_attention_mask"},
                  {"sentence_embedding": "EMBEDDING"}),
        ]) + "\n  ]\n}",
    ]) + "\n"


def history_encoder_config(spec: RepositorySpec) -> str:
    return "\n".join([
        _header("history_encoder", "liked item ids → the history tower's user vector (item "
                "table rows → causal transformer, ONNX); no tokenizer", backend="python",
                max_batch_size=spec.max_batch_size),
        _block("input", [
            _io("input", "HISTORY", "TYPE_STRING", [-1], comment="liked item ids, oldest → newest",
                ragged=spec.ragged_batches),
            _io("input", "EXCLUDE", "TYPE_STRING", [-1], optional=True,
                ragged=spec.ragged_batches)]),
        _block("output", [
            _io("output", "EMBEDDING", "TYPE_FP32", [spec.history_dim]),
            _io("output", "EXCLUDE_ALL", "TYPE_STRING", [-1],
                comment="the known history ids and EXCLUDE: left out by the scorer"),
            _io("output", "SKIPPED", "TYPE_STRING", [-1],
                comment="history ids not in the catalog (skipped, not an error)")]),
        # requests queued together are encoded in one onnxruntime call
        _dynamic(spec, spec.history_queue_delay_us, []),
        _instances(spec.history_instances),
        version_policy(),
        _params({"MAX_LEN": spec.history_max_len, "MAX_HISTORY": spec.history_max_ids,
                 "THREADS": 1}),
    ]) + "\n"


def _recommend_history_io(ragged: bool = False) -> list[str]:
    """Inputs and outputs of `recommend_history`, the same for the ensemble and the fused model.
    `ragged` (the fused model): requests of any history length batch together — without it
    Triton's batcher joins only equal shapes, and histories of 1…200 ids ran at an average
    batch of 1.02 at concurrency 8 (docs/benchmarks.md)."""
    return [
        _block("input", [
            _io("input", "HISTORY", "TYPE_STRING", [-1], comment="liked item ids, oldest → newest",
                ragged=ragged),
            *_option_inputs(ragged)]),
        _block("output", [_io("output", "ITEM_IDS", "TYPE_STRING", [-1]),
                          _io("output", "SCORES", "TYPE_FP32", [-1]),
                          _io("output", "DOMAINS", "TYPE_STRING", [-1]),
                          _io("output", "SKIPPED", "TYPE_STRING", [-1]), _release_output()])]


def history_fused_config(spec: RepositorySpec) -> str:
    return "\n".join([
        _header(HISTORY_FUSED, "liked item ids → top-k item ids, scores, domains: the "
                "`recommend_history` ensemble's two models in one python model (one backend "
                "crossing, not two)", backend="python", max_batch_size=spec.max_batch_size),
        *_recommend_history_io(ragged=spec.ragged_batches),
        _dynamic(spec, spec.history_queue_delay_us, []) if spec.history_fused_batching else
        "# no dynamic batching (history_fused_batching false): a request an execute, each on\n"
        "# the first free instance, no queue timeout",
        _instances(spec.history_instances),
        _params({"RELEASE": FIRST_RELEASE, "PATH": "history", "MAX_LEN": spec.history_max_len,
                 "MAX_HISTORY": spec.history_max_ids, "THREADS": 1, "CATALOG_DIR": "catalog",
                 "DEFAULT_K": spec.default_k, "MAX_K": spec.max_k, "INDEX": spec.scorer_index,
                 "INDEX_LOAD": _index_load(spec),
                 "UNKNOWN_EXCLUDE": "skip"}),
    ]) + "\n"


def recommend_history_config(spec: RepositorySpec) -> str:
    return "\n".join([
        _header("recommend_history", "liked item ids → top-k item ids, scores, domains "
                "(history_encoder → history_scorer); unknown ids come back in SKIPPED",
                platform="ensemble", max_batch_size=spec.max_batch_size),
        *_recommend_history_io(),
        "ensemble_scheduling {\n  step [\n" + ",\n".join([
            _step("history_encoder", {"HISTORY": "HISTORY", "EXCLUDE": "EXCLUDE"},
                  {"EMBEDDING": "history_embedding", "EXCLUDE_ALL": "history_exclude",
                   "SKIPPED": "SKIPPED"}),
            _step("history_scorer", {"EMBEDDING": "history_embedding", "K": "K",
                                     "DOMAIN": "DOMAIN", "EXCLUDE": "history_exclude",
                                     "MIN_SCORE": "MIN_SCORE"},
                  {"ITEM_IDS": "ITEM_IDS", "SCORES": "SCORES", "DOMAINS": "DOMAINS",
                   "RELEASE": "RELEASE"}),
        ]) + "\n  ]\n}",
    ]) + "\n"


def model_configs(spec: RepositorySpec, flavor: str) -> dict[str, str]:
    """{model name: config.pbtxt text} for one flavor."""
    if flavor not in FLAVORS:
        raise TowerliteError(f"unknown flavor {flavor!r}; choose from {', '.join(FLAVORS)}")
    configs = {"tokenizer": tokenizer_config(spec, flavor=flavor)}
    if spec.item_tokenizer:
        configs["item_tokenizer"] = tokenizer_config(spec, "item_tokenizer", flavor)
    configs["user_encoder"] = encoder_config(spec, "user_encoder", flavor)
    configs["item_encoder"] = encoder_config(spec, "item_encoder", flavor)
    configs["scorer"] = scorer_config(spec)
    configs["recommend"] = recommend_config(spec)
    configs["embed_items"] = embed_items_config(spec)
    if flavor == "portable":
        configs[FUSED] = fused_config(spec)
    if spec.history_dim:
        configs["history_encoder"] = history_encoder_config(spec)
        configs["history_scorer"] = scorer_config(spec, "history_scorer")
        configs["recommend_history"] = recommend_history_config(spec)
        configs[HISTORY_FUSED] = history_fused_config(spec)
    return configs
