#!/usr/bin/env bash
# Installs the test dependencies and runs the whole suite: lint, types, layering, tests.
# Tests needing MariaDB, PostgreSQL, RabbitMQ or Mosquitto skip when the service is
# absent, unless CI is set, in which case they fail. Database tests cover SQLite,
# MariaDB and PostgreSQL unless DFFMPEG_TEST_DATABASES names fewer.
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
# Tests that use the coordinator's database (fixtures app, api, database_url) run once
# per database kind; the slow end-to-end tests with ffmpeg use SQLite only.
export DFFMPEG_TEST_DATABASES="${DFFMPEG_TEST_DATABASES:-sqlite,mariadb,postgresql}"
pytest "$@"
