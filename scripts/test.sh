#!/usr/bin/env bash
# Sets up, then checks the code (ruff lint, import-linter layer contracts) and runs
# every test: unit tests and integration tests against the real embedded broker and
# a real local Spark. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# what only the tests need: stunnel4 (TLS in front of the embedded broker)
test_debs=()
command -v stunnel4 >/dev/null 2>&1 || test_debs+=(stunnel4)
if [ ${#test_debs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "test: installing Debian packages: ${test_debs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${test_debs[@]}" >/dev/null
fi
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
