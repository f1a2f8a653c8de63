#!/usr/bin/env bash
# `towerlite bench gpu-serving`: a repository served and measured on a GPU machine — `texts` here, `run` there (docs/benchmarks.md).
# Arguments go to it; `bash scripts/gpu_serving.sh --help` lists them.
exec "$(dirname "$0")/../.venv/bin/towerlite" bench gpu-serving "$@"
