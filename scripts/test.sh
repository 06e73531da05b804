#!/usr/bin/env bash
# Sets up, then checks the code (ruff lint, import-linter layer contracts) and runs
# every test: unit tests and integration tests against the real embedded broker and
# a real local Spark. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: ruff"
.venv/bin/ruff check .
echo "test: import-linter (layers follow the data flow)"
.venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "test: pytest collected no tests; that is a broken test command, not a pass" >&2
  exit 1
fi
exit $rc
