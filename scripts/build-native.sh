#!/usr/bin/env bash
# Builds the intake's native JPEG decoder (lib/intake/native/jpeg_prepare.c: JPEG -> model tensor) into build/native/jpeg_prepare.node.
# Needs a C compiler, Node's headers (node_api.h) and libjpeg-turbo's headers and shared library (Debian:
# libjpeg62-turbo-dev; Ubuntu: libjpeg-turbo8-dev). The module links the system libjpeg dynamically (Debian's
# libjpeg.a is not position-independent), so build it where it runs, as the worker image does. Node-API is
# ABI-stable: one build serves every Node version >= 20. The module looks for libjpeg next to itself first (rpath
# $ORIGIN), so an image whose base lacks that libjpeg ABI can carry it there (functions/worker/Dockerfile does).
#
# Without the module the intake decodes JPEGs with sharp alone (slower; see BENCHMARKS.md): `--jpeg-decoder sharp`
# makes that explicit, and the default `auto` logs which decoder it uses.
#
#   bash scripts/build-native.sh            build (installs libjpeg62-turbo-dev with apt when headers are missing
#                                            and MLMF_NATIVE_APT=1)
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${CC:-cc}
NODE_INCLUDE=${NODE_INCLUDE:-}
if [ -z "$NODE_INCLUDE" ]; then
  for d in "$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")/include/node" /usr/include/node /usr/local/include/node \
    node_modules/node-api-headers/include; do
    if [ -f "$d/node_api.h" ]; then NODE_INCLUDE=$d; break; fi
  done
fi
if [ -z "$NODE_INCLUDE" ]; then
  echo "build-native: node_api.h not found; set NODE_INCLUDE to Node's include/node directory" >&2
  exit 1
fi
if ! echo '#include <stdio.h>
#include <jpeglib.h>' | "$CC" -E -x c - >/dev/null 2>&1; then
  if [ "${MLMF_NATIVE_APT:-0}" = 1 ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q && $SUDO apt-get install -y -q --no-install-recommends libjpeg62-turbo-dev
  else
    echo "build-native: jpeglib.h not found; install libjpeg-turbo's development package (Debian: libjpeg62-turbo-dev)" >&2
    exit 1
  fi
fi
mkdir -p build/native
"$CC" -O3 -ffp-contract=off -fPIC -shared -fvisibility=hidden -Wall -Wextra -Werror -std=c11 \
  -I"$NODE_INCLUDE" lib/intake/native/jpeg_prepare.c -ljpeg -lm -Wl,-rpath,'$ORIGIN' \
  -o build/native/jpeg_prepare.node.tmp
mv build/native/jpeg_prepare.node.tmp build/native/jpeg_prepare.node
echo "build-native: build/native/jpeg_prepare.node (libjpeg-turbo $(node -p "require('./build/native/jpeg_prepare.node').libjpegTurboVersion"))"
