#!/usr/bin/env bash
# The main job on the embedded default: set up, fetch and verify every real asset, then run
# the end-to-end chain. Until the later stages land, it stops after `towerlite prepare`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/towerlite prepare
.venv/bin/towerlite assets
