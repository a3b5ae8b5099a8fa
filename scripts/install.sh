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

if [ "${1:-}" = "--test" ] && ! command -v openssl >/dev/null; then
  # The MQTT-over-TLS test makes its own CA and server certificate with it.
  echo "== installing Debian's openssl"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
fi

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null; then
  # The console's --serve test opens it in Debian's headless chromium (Playwright
  # drives it; no browser is ever downloaded).
  echo "== installing Debian's chromium"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
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
