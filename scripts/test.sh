#!/usr/bin/env bash
# The test suite: set up, fetch the real assets (cached after the first run), run pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k assets`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/towerlite prepare
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$status"
