#!/usr/bin/env bash
# One command: create tools/export/.venv (once), install the pinned toolchain, run the exporter with your arguments.
#   tools/export/export.sh CHECKPOINT_DIR --out models/mlm-filter-qwen [--vision-tower DIR]
#   tools/export/export.sh --tiny-random --family qwen --reference --out test/fixtures/models/tiny-llava-qwen
#   tools/export/export.sh --random-config --family qwen --layers 2 --vision-layers 2 --out bench/.cache/model
#   tools/export/export.sh --expected-token-ids     (rewrites test/fixtures/tokenizers/*-expected.json)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "export.sh: installing the export toolchain into $venv (first run downloads torch, several GB)" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" >"$stamp"
fi
# The exporter runs on CPU; keep torch from probing for GPUs and silence the torchvision-not-installed notes.
export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES-}"
export TORCH_LOGS="${TORCH_LOGS:--onnx}"
# onnxruntime's built-in telemetry stays off unless MLMF_ORT_TELEMETRY=1 (README "What leaves your network").
case "${MLMF_ORT_TELEMETRY:-}" in 1 | true | yes) export ORT_DISABLE_TELEMETRY=0 ;; *) export ORT_DISABLE_TELEMETRY=1 ;; esac
if [[ "${1-}" == "--expected-token-ids" ]]; then
  shift
  exec "$venv/bin/python" "$here/expected_token_ids.py" "$@"
fi
exec "$venv/bin/python" "$here/export.py" "$@"
