#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium for the report rendering test (test/ops/report-browser.test.ts) and
# prints the path of its executable on stdout (messages go to stderr), so callers record it:
#   export MLMF_CHROMIUM="$(bash scripts/install-chromium.sh)"     (.ci/run does this)
#   bash scripts/install-chromium.sh --path                       (prints the path of one already installed, installs
#                                                                  nothing, exits 1 when there is none; test.sh uses it)
# Idempotent: installs nothing when a Chromium is already there. Installing needs root (or sudo).
set -euo pipefail

installed() {
  local bin
  for bin in chromium chromium-browser; do
    if command -v "$bin" >/dev/null 2>&1; then
      command -v "$bin"
      return 0
    fi
  done
  return 1
}

if [ "${1:-}" = "--path" ]; then
  installed
  exit
fi

if path="$(installed)"; then
  echo "install-chromium: $("$path" --version 2>/dev/null || echo chromium) already installed at $path" >&2
  echo "$path"
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
if ! installed >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >&2
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2
fi
path="$(installed)" || {
  echo "install-chromium: apt-get installed chromium but no chromium is on PATH" >&2
  exit 1
}
"$path" --version >&2
echo "$path"
