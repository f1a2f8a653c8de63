#!/usr/bin/env bash
# The main job on the embedded default: set up, fetch and verify every real asset, distill a
# small student from the teacher (the quick `tiny` preset; `towerlite distill` alone runs the
# full comparison), export it to ONNX with int8, parity-gated. Serving and the benchmark join
# as they land. Outputs go to runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/towerlite prepare
.venv/bin/towerlite distill --preset tiny --out runs/demo/distill
.venv/bin/towerlite export --model runs/demo/distill/model --out runs/demo/export
