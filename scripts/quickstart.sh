#!/usr/bin/env bash
# The README's first command: install, then run the main job on the sample data the repository ships.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CPU runtime ships inside onnxruntime-node; its postinstall would download CUDA libraries from NuGet (a GPU image
# gets them from PyPI wheels instead: scripts/cuda-provider.sh).
export ONNXRUNTIME_NODE_INSTALL="${ONNXRUNTIME_NODE_INSTALL:-skip}"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
# The intake's native JPEG decoder (C, libjpeg-turbo); without it JPEGs go through sharp alone, about half as fast.
MLMF_NATIVE_APT=1 bash scripts/build-native.sh
rm -rf out/sample
# The checkout's own bin, not `npx mlm-filter`: npm 11's exec installs the project into its npx cache first, and a
# first call there was seen to leave that cache half-made (ENOENT on its package.json) and fail every later call.
node bin/mlm-filter.js filter --input sample/pairs.jsonl --out out/sample --model test/fixtures/models/tiny-llava-qwen "$@"
