#!/usr/bin/env bash
# The Python readers the output tests check `mlm-filter filter`'s files with, as a data team reads them: pyarrow for
# pairs.parquet, numpy for the DataComp uid list (.npy). pip-installed, pinned, into a venv (reused when present);
# prints the venv's python. The tests call it; a fresh machine (CI) installs on first use.
# Usage: scripts/py-readers.sh   (MLMF_PY_READERS_VENV overrides where the venv goes; default .services/py-readers)
set -euo pipefail
cd "$(dirname "$0")/.."

PYARROW_VERSION=26.0.1
NUMPY_VERSION=2.4.6
VENV=${MLMF_PY_READERS_VENV:-.services/py-readers}
want="pyarrow=$PYARROW_VERSION numpy=$NUMPY_VERSION"
have=$("$VENV/bin/python" -c 'import pyarrow, numpy; print(f"pyarrow={pyarrow.__version__} numpy={numpy.__version__}")' 2>/dev/null || true)
if [[ "$have" != "$want" ]]; then
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "pyarrow==$PYARROW_VERSION" "numpy==$NUMPY_VERSION" >&2
fi
echo "$(cd "$VENV" && pwd)/bin/python"
