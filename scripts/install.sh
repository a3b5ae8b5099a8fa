#!/usr/bin/env bash
# Installs what dffmpeg needs on a fresh Debian machine: Debian's ffmpeg and a virtual
# environment in .venv with dffmpeg (and, with --test, the test tools) installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "== installing Debian's ffmpeg"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

if [ "${1:-}" = "--test" ]; then
  # openssl: the MQTT-over-TLS test makes its own CA and server certificate with it.
  # prometheus: its promtool checks what GET /metrics serves, the scrape config and the
  # alert rules in docs/. faketime: the doctor test runs the client with its clock off.
  missing=""
  command -v openssl >/dev/null || missing="$missing openssl"
  command -v promtool >/dev/null || missing="$missing prometheus"
  command -v faketime >/dev/null || missing="$missing faketime"
  if [ -n "$missing" ]; then
    echo "== installing Debian's$missing"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    # Only promtool is used: the Prometheus server the package brings is not started.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      $missing >/dev/null
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
echo "== installing dffmpeg${extra} into .venv"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
.venv/bin/python -m pip install -q -e ".${extra}" 2>&1 | grep -v -i warning || true
.venv/bin/python -c "import coordinator, worker, client, console" 
