#!/usr/bin/env bash
# Installs the test dependencies and runs the whole suite: lint, types, layering, tests.
# Tests needing MariaDB, PostgreSQL, RabbitMQ or Mosquitto skip when the service is
# absent, unless CI is set, in which case they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh --test
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== import-linter"
lint-imports
echo "== pytest"
pytest "$@"
