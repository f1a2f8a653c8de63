#!/usr/bin/env bash
# `towerlite bench sweep`: serving settings on one deployed repository, one server at a time (docs/benchmarks.md).
# Arguments go to it; `bash scripts/serving_sweep.sh --help` lists them.
exec "$(dirname "$0")/../.venv/bin/towerlite" bench sweep "$@"
