#!/usr/bin/env bash
# The README's main command: set up (or reuse) .venv, then run the demo.
source "$(dirname "$0")/_env.sh"
python -m salt_seg.demo "$@"
