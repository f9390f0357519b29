#!/usr/bin/env bash
# The README's test command: set up (or reuse) .venv, then run the test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` or `bash scripts/test.sh tests/model`.
source "$(dirname "$0")/_env.sh"
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
# pytest exits 5 when no test ran; that is a failure here, never a silent pass.
python -m pytest -q "$@"
