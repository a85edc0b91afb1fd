#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium at /usr/bin/chromium for the report rendering test
# (test/ops/report-browser.test.ts). Idempotent: does nothing when it is already there. Needs root (or sudo).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
  echo "install-chromium: $(/usr/bin/chromium --version 2>/dev/null || echo 'chromium') already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-chromium: need root or sudo to apt-get install chromium" >&2
    exit 1
  fi
fi

# Several jobs may share the machine: one apt run at a time.
exec 9>/tmp/install-chromium.lock
flock 9
if [ -x /usr/bin/chromium ]; then exit 0; fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
/usr/bin/chromium --version
