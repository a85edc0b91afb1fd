#!/usr/bin/env bash
# On the lent GPU machine (device tool, carry [".devcarry"] made by scripts/gpu-pack.sh): unpack the carried Node and
# node_modules, then (1) bench/scorer/ep-check.ts on WebGPU (EP_VERBOSE=1: also the nodes onnxruntime left on the
# CPU; SKIP_EP=1 skips it), (2) with SCORER_BENCH=1, the scorer bench on WebGPU with a realistic-width model exported
# there, SCORER_PROFILE=1 onnxruntime's profile of scoring with it, (3) the intake bench on that host's CPU (SKIP_INTAKE=1 skips it). Logs land in $OUT.
set -u
cd "$(dirname "$0")/.."
t0=$(date +%s)
source scripts/gpu-unpack.sh
for f in .devcarry/gl/*.deb; do dpkg -x "$f" /; done; ldconfig
ls /usr/local/nvidia /usr/local/nvidia/share/vulkan/icd.d /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1 | head -20
find / -xdev \( -name '*nvidia*icd*.json' -o -name '10_nvidia.json' \) 2>/dev/null | head
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
echo "unpacked in $(( $(date +%s) - t0 )) s"
{ node --version; nproc; lscpu | grep -E "Model name|^CPU\(s\)|MHz" ; nvidia-smi -L; } 2>&1 | tee "$OUT/host.txt"
ldconfig -p | grep -i vulkan | head -2
if [ "${SKIP_EP:-0}" = 1 ]; then
  :
elif [ "${EP_VERBOSE:-0}" = 1 ]; then
  timeout 180 node --import tsx bench/scorer/ep-check.ts webgpu > /tmp/ep.log 2>&1
  grep -v "\[V:" /tmp/ep.log | grep -v "^\s*at " | tail -12 | tee "$OUT/ep-check.log"
  # every placement block: the header line and the node lines under it
  awk '/placed on \[/ {print; n=($0 ~ /Node\(s\) placed on \[CPU/) ? $NF+0 : 0; next} n>0 {print; n--}' /tmp/ep.log | sed 's/^.*VerifyEachNodeIsAssignedToAnEp\]//' > "$OUT/placements.log"
  grep -c . "$OUT/placements.log"; grep -v "placed on" "$OUT/placements.log" | awk '{print $1}' | sort | uniq -c
else
  timeout 180 node --import tsx bench/scorer/ep-check.ts webgpu 2>&1 | grep -v "^\s*at " | tail -40 | tee "$OUT/ep-check.log"
fi
echo "ep-check done at $(( $(date +%s) - t0 )) s"
if [ "${SCORER_BENCH:-0}" = 1 ] || [ "${SCORER_PROFILE:-0}" = 1 ]; then
  # A realistic-width random model (Qwen2.5-1.5B + SigLIP widths, 2 decoder and 2 vision layers), exported here with
  # the image's own torch/transformers.
  CUDA_VISIBLE_DEVICES= timeout 330 python3 tools/export/export.py --random-config --family qwen --layers 2 \
    --dtypes "${BENCH_DTYPE:-fp16}" --no-check --out /tmp/bench-model 2>&1 | grep -v Warning | tail -8
  echo "export done at $(( $(date +%s) - t0 )) s"
fi
if [ "${SCORER_BENCH:-0}" = 1 ]; then
  # The scorer bench on WebGPU: reference way vs ours, same EP, same model.
  timeout 240 node --import tsx bench/scorer/run.ts --model /tmp/bench-model --dtype "${BENCH_DTYPE:-fp16}" \
    --ep webgpu --pairs "${BENCH_SCORER_PAIRS:-32}" --batch 8 2>&1 | grep -v "\[W:onnxruntime" | tail -30 | tee "$OUT/scorer-webgpu.log"
  echo "scorer bench done at $(( $(date +%s) - t0 )) s"
fi
if [ "${SCORER_PROFILE:-0}" = 1 ]; then
  # Where a WebGPU scoring call's time goes (onnxruntime's profiler, summed per session and operator).
  timeout 180 node --import tsx bench/scorer/ep-profile.ts /tmp/bench-model webgpu "${BENCH_DTYPE:-fp16}" 32 2>&1 \
    | grep -v "\[W:onnxruntime" | tail -40 | tee "$OUT/scorer-profile.log"
  echo "scorer profile done at $(( $(date +%s) - t0 )) s"
fi
[ "${SKIP_INTAKE:-0}" = 1 ] && exit 0
BENCH_PAIRS=${BENCH_PAIRS:-1000} BENCH_NO_WRITE=1 timeout 240 node --import tsx bench/intake/run.ts 2>&1 | tail -25 | tee "$OUT/intake.log"
echo "all done at $(( $(date +%s) - t0 )) s"
