#!/usr/bin/env bash
# Installs what dffmpeg needs on a fresh Debian machine: Debian's ffmpeg and bubblewrap
# (every job runs in a sandbox) and a virtual environment in .venv with dffmpeg (and,
# with --test, the test tools) installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  echo "== installing Debian's ffmpeg"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

if ! command -v bwrap >/dev/null; then
  # Workers run every job inside a bubblewrap sandbox (docs/security-model.md).
  echo "== installing Debian's bubblewrap"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bubblewrap >/dev/null
fi

if ! command -v gcc >/dev/null; then
  # The drop-in's native launcher is built here (client/native/launcher.c); the sandbox
  # tests also build a real shared library to prove it is never loaded.
  echo "== installing Debian's gcc"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc libc6-dev >/dev/null
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

if [ "${1:-}" = "--test" ] && ! command -v nginx >/dev/null; then
  # The deployment test puts nginx, with a config of its own, in front of a coordinator.
  # The package must not start Debian's own nginx on port 80: where no policy says so
  # already, one that forbids starting services is in place for the install.
  echo "== installing Debian's nginx"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx-light >/dev/null || status=$?
  [ -n "$policy" ] && $SUDO rm -f "$policy"
  [ "${status:-0}" = 0 ] || exit "$status"
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
if [ ! -x .venv/bin/python ] && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
  # Debian's python3 makes virtual environments only with python3-venv installed.
  echo "== installing Debian's python3-venv"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PYTHON" -m venv .venv
fi
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
echo "== installing dffmpeg${extra} into .venv"
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
# compat: a plain path in a .pth file. The default editable finder imports pathlib and
# more at every interpreter start (about 25 ms of CPU per drop-in call).
.venv/bin/python -m pip install -q -e ".${extra}" --config-settings editable_mode=compat 2>&1 | grep -v -i warning || true
# Compiled once here: a drop-in started by a media server's own user, who cannot write
# beside the sources, would otherwise compile every module again at every call (about
# 20 ms of CPU each time, more than the rest of its start-up).
.venv/bin/python -m compileall -q -j 0 dffmpeg coordinator worker client console >/dev/null
# The drop-in's native launcher replaces pip's Python script of the same name: it hands
# each call to a long-lived local helper (client/helper.py) and runs the Python drop-in
# itself only when no helper answers. The helper's socket name is tied to this .venv.
python_path="$(cd .venv/bin && pwd)/python"
tag=$(.venv/bin/python -c 'from client.helper import install_tag; print(install_tag())')
gcc -O2 -Wall -Wextra -Werror -o .venv/bin/dffmpeg-proxy.new \
  -DDFFMPEG_PYTHON="\"$python_path\"" -DDFFMPEG_HELPER_TAG="\"$tag\"" client/native/launcher.c
mv -f .venv/bin/dffmpeg-proxy.new .venv/bin/dffmpeg-proxy
.venv/bin/python -c "import coordinator, worker, client, console" 
