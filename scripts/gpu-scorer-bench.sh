#!/usr/bin/env bash
# The one-pass scorer on a GPU against PyTorch, on the lent machine (H200: CUDA 13 + cuDNN 9 libraries, torch,
# transformers, onnx, onnxscript; no Node, no registry). Same random weights of the real shapes (full-depth
# Qwen2.5-1.5B + SigLIP-so400m, from tools/export's --random-config with one seed), same captions:
#   1. `STEP=export`: exports the fp16 scoring graph there (tools/export/export.py, on the CPU; minutes for 28 layers)
#      into bench/.cache/gpu-full (git-ignored: it stays while the machine is warm);
#   2. `STEP=bench` (default `all` = both): bench/scorer/run.ts on the CUDA EP (one-pass, all 4 metrics and
#      `--metrics policy`), then bench/scorer/torch_shared_prefix.py (PyTorch's shared-prefix scorer: DESIGN.md's
#      ~93 pairs/s ceiling) with all 4 metrics and with ITM+ODF, and prints both and the ratios.
# Logs land in $OUT. Goal (issue 11): one-pass >= 90% of PyTorch's pairs/s with all 4 metrics, >= 2x that with policy.
#
# Prepare here: `bash scripts/gpu-pack.sh --cuda` (.devcarry: Node, node_modules, tokenizer, ~52 MB; .devcarry-cuda/1..3:
# the CUDA provider in parts). Then, back to back so the machine stays warm (device tool, `run`):
#   carry [".devcarry"]        command `true`
#   carry [".devcarry-cuda/1"] command `true`      (and so on for each part)
#   carry [".devcarry-cuda/3"] command `STEP=export bash scripts/gpu-scorer-bench.sh`   (timeout ~560)
#   command `STEP=bench bash scripts/gpu-scorer-bench.sh`                               (timeout ~500)
# Knobs: LAYERS (28), VISION_LAYERS (27), PAIRS (256), BATCH (32), TORCH_DTYPE (fp16), PYTHON (python3), TORCH_DEVICE
# (cuda), EP (cuda). A dry run on a machine without a GPU: `LAYERS=2 VISION_LAYERS=2 PAIRS=4 BATCH=2 TORCH_DEVICE=cpu
# PYTHON=tools/export/.venv/bin/python bash scripts/gpu-scorer-bench.sh` (the CUDA EP then falls back to the CPU).
set -u
cd "$(dirname "$0")/.."
t0=$(date +%s)
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
LAYERS="${LAYERS:-28}"
VISION_LAYERS="${VISION_LAYERS:-27}"
PAIRS="${PAIRS:-256}"
BATCH="${BATCH:-32}"
MODEL=bench/.cache/gpu-full
STEP="${STEP:-all}"
PYTHON="${PYTHON:-python3}"
elapsed() { echo "[$(($(date +%s) - t0)) s] $*"; }

source scripts/gpu-unpack.sh

# The CUDA provider: parts carried in .devcarry-cuda/N, reassembled beside onnxruntime-node's binding.
binding=node_modules/onnxruntime-node/bin/napi-v6/linux/x64
if [ ! -f "$binding/libonnxruntime_providers_cuda.so" ]; then
  cat $(ls .devcarry-cuda/*/part-* | sort -t/ -k2 -n) | zstd -d -q | tar -x -C "$binding"
fi
# The host's CUDA 13 / cuDNN 9 libraries, wherever this image keeps them (system, CUDA toolkit, torch's nvidia wheels).
libdirs=$(
  {
    ldconfig -p | awk '/libcublasLt\.so\.13|libcudnn\.so\.9|libcurand\.so\.10|libcudart\.so\.13|libnvrtc\.so\.13/ {print $NF}'
    find /usr/local/cuda*/ /usr/lib/x86_64-linux-gnu "$("$PYTHON" -c 'import site; print(site.getsitepackages()[0])')/nvidia" \
      \( -name 'libcublasLt.so.13' -o -name 'libcudnn.so.9' -o -name 'libcurand.so.10' -o -name 'libcudart.so.13' -o -name 'libnvrtc.so.13' \) 2>/dev/null
  } | xargs -r -n1 dirname | sort -u | paste -sd:
)
export LD_LIBRARY_PATH="$binding:${libdirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  elapsed "unpacked"
  node --version
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  ldd "$binding/libonnxruntime_providers_cuda.so" | grep -E "not found|cublas|cudart|curand|cudnn" || true
} 2>&1 | tee "$OUT/host.txt"

if [ "$STEP" = export ] || [ "$STEP" = all ]; then
  if [ ! -f "$MODEL/onnx/mlm_scorer_fp16.onnx" ]; then
    CUDA_VISIBLE_DEVICES= timeout "${EXPORT_TIMEOUT:-540}" "$PYTHON" tools/export/export.py --random-config --family qwen \
      --layers "$LAYERS" --vision-layers "$VISION_LAYERS" --dtypes fp16 --parts scorer --no-check --out "$MODEL" 2>&1 \
      | grep -v -i warn | tail -5 | tee "$OUT/export.log"
  fi
  elapsed "export step done: $(du -sh "$MODEL" 2>/dev/null | cut -f1)" | tee -a "$OUT/export.log"
fi

if [ "$STEP" = bench ] || [ "$STEP" = all ]; then
  timeout "${NODE_TIMEOUT:-300}" node --import tsx bench/scorer/run.ts --model "$MODEL" --dtype fp16 --ep "${EP:-cuda}" \
    --baseline none --pairs "$PAIRS" --batch "$BATCH" 2>&1 | grep -v "\[W:onnxruntime" | tail -20 | tee "$OUT/onepass.log"
  elapsed "one-pass bench done"
  timeout "${TORCH_TIMEOUT:-300}" "$PYTHON" bench/scorer/torch_shared_prefix.py --layers "$LAYERS" \
    --vision-layers "$VISION_LAYERS" --pairs "$PAIRS" --batch "$BATCH" --dtype "${TORCH_DTYPE:-fp16}" \
    --device "${TORCH_DEVICE:-cuda}" --metrics all,policy 2>&1 | grep -v -i warn | tail -3 | tee "$OUT/torch.log"
  elapsed "torch done"
  # One summary: pairs/s of each and the ratios against PyTorch with all 4 metrics.
  python3 - "$OUT" <<'PY' | tee "$OUT/summary.txt"
import re, sys
out = sys.argv[1]
one = open(f"{out}/onepass.log").read()
torch_log = open(f"{out}/torch.log").read()
def row(label):
    m = re.search(r"\| " + re.escape(label) + r"[^|]*\| ([0-9.]+) \|", one)
    return float(m.group(1)) if m else float("nan")
onepass, policy = row("one-pass graph, all 4 metrics"), row("one-pass graph, `--metrics policy`")
t = [float(x) for x in re.findall(r"batch \d+: ([0-9.]+) pairs/s", torch_log)]
t_all, t_pol = (t + [float("nan")] * 2)[:2]
print(f"one-pass (CUDA EP, fp16): all {onepass:.2f} pairs/s, policy {policy:.2f} pairs/s")
print(f"PyTorch shared prefix ({'fp16'}): all {t_all:.2f} pairs/s, itm+odf {t_pol:.2f} pairs/s")
print(f"one-pass all / PyTorch all = {onepass / t_all:.2f} (goal >= 0.90); one-pass policy / PyTorch all = {policy / t_all:.2f} (goal >= 2.0)")
PY
fi
elapsed "all done"
