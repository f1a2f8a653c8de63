#!/usr/bin/env bash
# The main job on the embedded default: set up, then `towerlite demo`: fetch and verify the real
# assets, distill a student from the teacher (preset `demo`), export it to ONNX (fp32, int8),
# deploy the portable Triton repository over MovieLens, serve it, evaluate quality in-process
# and through Triton, benchmark latency, and print one summary. Outputs go to runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/towerlite demo --out runs/demo
