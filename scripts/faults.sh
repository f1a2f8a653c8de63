#!/usr/bin/env bash
# `towerlite bench faults`: faults against a real Triton server under load (docs/serving.md).
# Arguments go to it; `bash scripts/faults.sh --help` lists them.
exec "$(dirname "$0")/../.venv/bin/towerlite" bench faults "$@"
