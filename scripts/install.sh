#!/usr/bin/env bash
# Set up .venv on a fresh machine: the CPU build of torch first (never a CUDA one), then fedpipe.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[dev,ray]" -c <(echo torch==2.13.0)  # torch stays the CPU build
