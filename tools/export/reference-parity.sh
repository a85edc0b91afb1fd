#!/usr/bin/env bash
# Reference-code parity fixtures (tools/export/README.md, "Reference-code parity"):
#   tools/export/reference-parity.sh LLAVA_UNIFIED_DIR MLM_FILTER_DIR [FAMILIES]
# FAMILIES: comma-separated, default llava_qwen,llava_v1,llama3_8b,llama3_2.
# 1. the export venv trains the tiny tokenizers (tools/export/tiny.py);
# 2. the reference venv ($MLMF_REFERENCE_VENV, default ~/.cache/mlm-filter/reference-venv, created from
#    requirements-reference.txt on first use) builds each tiny checkpoint with LLaVA-Unified's classes and scores the
#    fixed pairs with LLaVA-Unified + the MLM_Filter v2 script -> test/fixtures/parity/<family>/reference.json;
# 3. export.sh converts each checkpoint -> test/fixtures/parity/<family>/model (fp32 scorer graph); it must exit 0.
# Scratch files (checkpoints) go to $MLMF_PARITY_WORK (default: a temporary folder, removed at the end).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ $# -lt 2 ]]; then
  echo "usage: $0 LLAVA_UNIFIED_DIR MLM_FILTER_DIR [FAMILIES]" >&2
  exit 2
fi
llava="$(cd "$1" && pwd)"
mlmf="$(cd "$2" && pwd)"
families="${3:-llava_qwen,llava_v1,llama3_8b,llama3_2}"
[[ -f "$llava/llava/model/builder.py" ]] || { echo "$llava is not a LLaVA-Unified checkout (no llava/model/builder.py)" >&2; exit 2; }
[[ -f "$mlmf/mlm_filter_scoring_datacomp_batch_inference_v2.py" ]] || { echo "$mlmf has no mlm_filter_scoring_datacomp_batch_inference_v2.py" >&2; exit 2; }

refvenv="${MLMF_REFERENCE_VENV:-$HOME/.cache/mlm-filter/reference-venv}"
reqs="$here/requirements-reference.txt"
stamp="$refvenv/.requirements.sha256"
want="$(sha256sum "$reqs" | cut -d' ' -f1)"
if [[ ! -x "$refvenv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "reference-parity: installing the reference toolchain into $refvenv" >&2
  mkdir -p "$(dirname "$refvenv")"
  "${PYTHON:-python3}" -m venv "$refvenv"
  "$refvenv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  echo "$want" >"$stamp"
fi
[[ -x "$here/.venv/bin/python" ]] || { echo "run tools/export/export.sh once first (it creates the export venv)" >&2; exit 2; }

work="${MLMF_PARITY_WORK:-}"
if [[ -z "$work" ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi
out="$root/test/fixtures/parity"
export CUDA_VISIBLE_DEVICES="" TOKENIZERS_PARALLELISM=false
"$here/.venv/bin/python" "$here/reference_parity.py" tokenizers --work "$work"
# The commits recorded in reference.json: git's answer for clones, else these (for checkouts made with git archive).
revs=()
[[ -n "${MLMF_LLAVA_UNIFIED_REV:-}" ]] && revs+=(--llava-unified-rev "$MLMF_LLAVA_UNIFIED_REV")
[[ -n "${MLMF_MLM_FILTER_REV:-}" ]] && revs+=(--mlm-filter-rev "$MLMF_MLM_FILTER_REV")
"$refvenv/bin/python" "$here/reference_parity.py" reference --llava-unified "$llava" --mlm-filter "$mlmf" \
  --work "$work" --out "$out" --families "$families" ${revs[@]+"${revs[@]}"}
IFS=',' read -ra fams <<<"$families"
for f in "${fams[@]}"; do
  ckpt="$("$refvenv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['checkpoint'])" "$work/checkpoints.json" "$f")"
  tower="$("$refvenv/bin/python" -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]['tower'])" "$work/checkpoints.json" "$f")"
  rm -rf "$out/$f/model"
  echo "reference-parity: exporting $f" >&2
  "$here/export.sh" "$ckpt" --vision-tower "$tower" --revision "tiny-random-seed0" --dtypes fp32 --parts scorer \
    --out "$out/$f/model" 2>&1 | tee "$work/export-$f.log"
done
