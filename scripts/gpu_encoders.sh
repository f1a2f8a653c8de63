#!/usr/bin/env bash
# `towerlite bench gpu-encoders`: exported encoders on a GPU machine — `pack` here, `run` there (docs/benchmarks.md).
# Arguments go to it; `bash scripts/gpu_encoders.sh --help` lists them.
exec "$(dirname "$0")/../.venv/bin/towerlite" bench gpu-encoders "$@"
