#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent: a second run with
# unchanged requirements files and pyproject.toml does nothing and takes a fraction of a second.
#
# Installs requirements-dev.txt (which includes requirements.txt, torch pinned to 2.13.0) and the
# project in editable mode, in one pip command, so the exact torch pin governs the whole install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KRONOS_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.kronos-setup"

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating $VENV with $("$PYTHON" --version 2>&1)" >&2
    "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when what decides the install has changed.
want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && "$VENV/bin/python" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('kronos_jobs')))" 2>/dev/null \
    && [[ -x "$VENV/bin/kronos-jobs" ]]; then
    exit 0
fi

echo "setup: installing requirements-dev.txt and the project into $VENV" >&2
cd "$ROOT"
# (This machine's pip configuration lists index folders that may not exist; drop pip's warning for each.)
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -e . \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
echo "$want" > "$STAMP"
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))" >&2
