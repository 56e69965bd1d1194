#!/usr/bin/env bash
# README command two: set up, then run the test suite. Arguments go to pytest.
#
# Integration tests use real Redis/PostgreSQL when KRONOS_TEST_REDIS_URL / KRONOS_TEST_DATABASE_URL
# are set (.ci/run sets them); with CI=true a configured but unreachable service fails the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
cd "$ROOT"

set +e
"${KRONOS_VENV:-$ROOT/.venv}/bin/python" -m pytest "$@"
rc=$?
set -e

if [[ $rc -eq 5 ]]; then
    # pytest's "no tests collected": the suite must exist, so this is a failure, not a pass.
    echo "test.sh: pytest collected no tests (exit code 5); treating that as a failure" >&2
    exit 1
fi
exit $rc
