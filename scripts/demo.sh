#!/usr/bin/env bash
# README command one: set up, then run the demo forecast through the real job system
# (API + CPU worker + scheduler as separate processes on the embedded SQLite + filesystem broker).
#
#   ./scripts/demo.sh --model random:small     # random weights: works offline, outputs are labelled
#   ./scripts/demo.sh                          # kronos-small from the Hugging Face hub
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "${KRONOS_VENV:-$ROOT/.venv}/bin/kronos-jobs" demo "$@"
