#!/usr/bin/env bash
# Assembles onnxruntime-node's CUDA execution provider from PyPI wheels.
#
# Why: onnxruntime-node ships only CPU binaries in the npm package; its postinstall downloads the CUDA provider
# libraries from NuGet (Microsoft.ML.OnnxRuntime.Gpu.Linux), which our builds cannot reach (they install with
# ONNXRUNTIME_NODE_INSTALL=skip). The same two provider libraries, built from the same release, ship in PyPI's
# `onnxruntime-gpu` wheel of the same version, and NVIDIA publishes the CUDA runtime libraries they load as `nvidia-*`
# wheels. A wheel is a zip: no Python environment is needed, only `pip download` and an unzip.
#
# What it installs, by default beside onnxruntime-node's own libonnxruntime.so.1 (onnxruntime loads provider libraries
# from the directory of libonnxruntime.so, so the two provider files must sit there):
#   - libonnxruntime_providers_shared.so, libonnxruntime_providers_cuda.so (from onnxruntime-gpu==<onnxruntime-node's
#     version>)
#   - full mode only, the CUDA 13 user-space libraries those need:
#       libcudart.so.13 (nvidia-cuda-runtime), libcublas.so.13 + libcublasLt.so.13 (nvidia-cublas),
#       libcurand.so.10 (nvidia-curand), libnvrtc.so.13 + libnvrtc-builtins.so.13.0 (nvidia-cuda-nvrtc: cuBLASLt and
#       cuDNN compile kernels at run time), libcudnn*.so.9 (nvidia-cudnn-cu13: convolutions, e.g. the vision tower).
# The provider library itself has no RUNPATH, so the dynamic loader finds those CUDA libraries only through
# LD_LIBRARY_PATH (or ld.so.conf): put the install directory on LD_LIBRARY_PATH when running (the script prints it).
#
# Not installed, by design: libcuda.so.1, the NVIDIA *driver's* library. It must match the host's kernel module, so it
# always comes from the host (on ECS / Docker: injected into the container by the NVIDIA container toolkit).
# onnxruntime-gpu 1.30 is a CUDA 13.0 build, and CUDA 13 needs NVIDIA driver >= 580 (580.65.06 or later; the
# ECS GPU-optimised Amazon Linux 2023 AMI ships 580.x, the Amazon Linux 2 one ships 550.x, which is too old).
# The pins below are the CUDA 13.0 Update 2 components and cuDNN 9.17 (whose support matrix lists CUDA 13.0 and driver
# >= 580.65.06), so nothing here needs a newer driver than CUDA 13.0 itself.
#
# Usage: scripts/cuda-provider.sh [--provider-only] [--dest DIR] [--cache DIR] [--check]
#   --provider-only  only the two provider libraries: for hosts that already have CUDA 13 + cuDNN 9 installed (a CUDA
#                    image, the lent GPU machine); the check then resolves the CUDA libraries from the host.
#   --dest DIR       where to install (default: onnxruntime-node's binding directory,
#                    node_modules/onnxruntime-node/bin/napi-v6/linux/x64). A DIR other than the directory holding
#                    libonnxruntime.so.1 is for staging (e.g. to copy into an image), since onnxruntime looks for the
#                    provider there.
#   --cache DIR      wheel cache (default: build/cuda-provider/.wheels, env MLMF_CUDA_WHEEL_CACHE). Wheels already there
#                    are not downloaded again, so reruns are offline and cheap. Sizes: onnxruntime-gpu ~247 MB,
#                    nvidia-cublas ~423 MB, nvidia-cudnn-cu13 ~358 MB, nvidia-cuda-nvrtc ~90 MB, nvidia-curand ~60 MB,
#                    nvidia-cuda-runtime ~2 MB (about 1.2 GB to download once; ~1.6 GB installed in full mode, the
#                    provider library alone 272 MB).
#   --check          after installing, create an onnxruntime-node session with executionProviders ['cuda'] on a
#                    one-Conv model built in memory (Conv runs through cuDNN) and run it. With a GPU it must score; on
#                    a host without an NVIDIA driver it must get as far as the CUDA driver check (the provider and all
#                    its libraries loaded), using a stand-in libcuda.so.1 compiled for the check only.
# pip does the downloads, so its configuration applies as usual (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_CERT, proxy
# variables, pip.conf). Needs: node, python3 with pip, ldd (libc-bin); --check on a driverless host also needs cc.
# Versions can be overridden through the environment (NVIDIA_CUDA_RUNTIME_VERSION, NVIDIA_CUBLAS_VERSION,
# NVIDIA_CURAND_VERSION, NVIDIA_NVRTC_VERSION, NVIDIA_CUDNN_VERSION); the onnxruntime-gpu version always follows
# onnxruntime-node's (the provider bridge between them is not a stable ABI: versions must match exactly).
set -euo pipefail
start_dir="$PWD"
cd "$(dirname "$0")/.."

NVIDIA_CUDA_RUNTIME_VERSION="${NVIDIA_CUDA_RUNTIME_VERSION:-13.0.96}"
NVIDIA_CUBLAS_VERSION="${NVIDIA_CUBLAS_VERSION:-13.1.0.3}"
NVIDIA_CURAND_VERSION="${NVIDIA_CURAND_VERSION:-10.4.0.35}"
NVIDIA_NVRTC_VERSION="${NVIDIA_NVRTC_VERSION:-13.0.88}"
NVIDIA_CUDNN_VERSION="${NVIDIA_CUDNN_VERSION:-9.17.1.4}"

dest=""
cache="${MLMF_CUDA_WHEEL_CACHE:-build/cuda-provider/.wheels}"
provider_only=0
check=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --dest) dest="${2:?--dest needs a directory}"; shift 2 ;;
    --dest=*) dest="${1#--dest=}"; shift ;;
    --cache) cache="${2:?--cache needs a directory}"; shift 2 ;;
    --cache=*) cache="${1#--cache=}"; shift ;;
    --provider-only) provider_only=1; shift ;;
    --check) check=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "cuda-provider: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
# Paths given on the command line are relative to where the script was called from; the defaults to the repository.
case "$dest" in "" | /*) ;; *) dest="$start_dir/$dest" ;; esac
if [ "$cache" != build/cuda-provider/.wheels ]; then case "$cache" in /*) ;; *) cache="$start_dir/$cache" ;; esac; fi

say() { echo "cuda-provider: $*"; }
die() { echo "cuda-provider: error: $*" >&2; exit 1; }

# The provider wheels exist for Linux x86_64 only in this layout (and onnxruntime-node's linux/arm64 binding has no
# CUDA support).
[ "$(uname -s)" = Linux ] && [ "$(uname -m)" = x86_64 ] || die "the CUDA provider is assembled for Linux x86_64 only"
command -v node >/dev/null || die "node is needed (to read onnxruntime-node's version and for --check)"
command -v python3 >/dev/null || die "python3 with pip is needed (Debian/Ubuntu: apt-get install python3-pip)"
python3 -m pip --version >/dev/null 2>&1 || die "python3 has no pip (Debian/Ubuntu: apt-get install python3-pip)"
command -v ldd >/dev/null || die "ldd is needed to verify the libraries (package libc-bin)"

# --- onnxruntime-node: its version (the wheel must match it exactly) and its binding directory --------------------
ort_pkg="node_modules/onnxruntime-node"
if [ -f "$ort_pkg/package.json" ]; then
  ort_version="$(node -p "require('./$ort_pkg/package.json').version")"
else
  # Not installed (e.g. staging with --dest before npm ci): the exact pin in package.json.
  ort_version="$(node -p "require('./package.json').dependencies['onnxruntime-node'] || ''")"
  [[ "$ort_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] \
    || die "onnxruntime-node is not installed and package.json does not pin an exact version (got '$ort_version')"
fi
if [ -z "$dest" ]; then
  for d in "$ort_pkg"/bin/napi-v*/linux/x64; do
    if [ -f "$d/onnxruntime_binding.node" ] && [ -f "$d/libonnxruntime.so.1" ]; then dest="$d"; fi
  done
  [ -n "$dest" ] \
    || die "no onnxruntime-node linux/x64 binding under $ort_pkg/bin (run: ONNXRUNTIME_NODE_INSTALL=skip npm ci)"
fi
mkdir -p "$dest" "$cache"
dest="$(cd "$dest" && pwd)"
cache="$(cd "$cache" && pwd)"
what="provider + CUDA 13 + cuDNN 9"
[ "$provider_only" = 1 ] && what="provider only"
say "onnxruntime-node $ort_version; installing ($what) into $dest; wheel cache $cache"

# --- the wheels: "<pip requirement>|<file patterns to take from it>" ----------------------------------------------
wheels=("onnxruntime-gpu==$ort_version|libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so")
if [ "$provider_only" = 0 ]; then
  wheels+=(
    "nvidia-cuda-runtime==$NVIDIA_CUDA_RUNTIME_VERSION|libcudart.so.13"
    "nvidia-cublas==$NVIDIA_CUBLAS_VERSION|libcublas.so.13 libcublasLt.so.13"
    "nvidia-curand==$NVIDIA_CURAND_VERSION|libcurand.so.10"
    "nvidia-cuda-nvrtc==$NVIDIA_NVRTC_VERSION|libnvrtc.so.13 libnvrtc-builtins.so.13.0"
    "nvidia-cudnn-cu13==$NVIDIA_CUDNN_VERSION|libcudnn*.so.9"
  )
fi

# Fixed target tags, whatever this host's Python is: the same files land in the cache everywhere (onnxruntime-gpu's
# wheels are per CPython version; the libraries we take do not depend on Python). pip does not widen an explicit
# --platform to older manylinux tags, hence the list.
pip_target=(--only-binary=:all: --no-deps --python-version 3.11
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
  --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64)

wheel_file() { # requirement -> cached wheel path (empty when absent). Wheel file names use '_' for '-'.
  local name="${1%%==*}" version="${1##*==}" f
  for f in "$cache/${name//-/_}-${version}-"*.whl; do
    if [ -f "$f" ]; then echo "$f"; return; fi
  done
}

for entry in "${wheels[@]}"; do
  req="${entry%%|*}"
  if [ -z "$(wheel_file "$req")" ]; then
    say "downloading $req"
    python3 -m pip download --disable-pip-version-check --progress-bar off "${pip_target[@]}" --dest "$cache" "$req" \
      || die "pip could not download $req (PyPI reachable? PIP_INDEX_URL?)"
    [ -n "$(wheel_file "$req")" ] || die "pip did not leave a wheel for $req in $cache"
  else
    say "cached $(basename "$(wheel_file "$req")")"
  fi
done

# --- extract: only the named libraries; a file already identical (size + CRC) is left alone ------------------------
# Each file is written to a temporary name and renamed, so a process loading the directory never sees half a library.
for entry in "${wheels[@]}"; do
  req="${entry%%|*}"
  read -r -a patterns <<<"${entry#*|}"
  python3 - "$(wheel_file "$req")" "$dest" "${patterns[@]}" <<'PY'
import fnmatch, os, sys, zipfile, zlib
wheel, dest, patterns = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    members = [i for i in z.infolist() if not i.is_dir()]
    for pat in patterns:
        hits = [i for i in members if fnmatch.fnmatch(os.path.basename(i.filename), pat)]
        if not hits:
            sys.exit(f"cuda-provider: error: {os.path.basename(wheel)} has no file matching {pat}")
        for info in hits:
            out = os.path.join(dest, os.path.basename(info.filename))
            if os.path.exists(out) and os.path.getsize(out) == info.file_size:
                crc = 0
                with open(out, 'rb') as f:
                    for block in iter(lambda: f.read(1 << 22), b''):
                        crc = zlib.crc32(block, crc)
                if crc == info.CRC:
                    continue
            tmp = out + '.partial'
            with z.open(info) as src, open(tmp, 'wb') as dst:
                while block := src.read(1 << 22):
                    dst.write(block)
            os.chmod(tmp, 0o755)
            os.replace(tmp, out)
            print(f"cuda-provider: installed {os.path.basename(out)} ({info.file_size / 1e6:.1f} MB)")
PY
done

# --- verify: every NEEDED entry resolves the way the dynamic loader will resolve it at run time ---------------------
# ldd follows NEEDED entries transitively with the loader's own search (LD_LIBRARY_PATH, then ld.so.cache and the
# default directories); the run-time setup puts $dest on LD_LIBRARY_PATH, so the check does too.
export LD_LIBRARY_PATH="$dest${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ldconfig_bin="$(command -v ldconfig || echo /sbin/ldconfig)"
driver_lib_found=0
if [ -x "$ldconfig_bin" ] && "$ldconfig_bin" -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then driver_lib_found=1; fi
IFS=: read -r -a ld_dirs <<<"$LD_LIBRARY_PATH"
for d in "${ld_dirs[@]}"; do [ -n "$d" ] && [ -e "$d/libcuda.so.1" ] && driver_lib_found=1; done

needed_of() { # the DT_NEEDED entries of an ELF64 little-endian shared library (readelf may not be installed)
  python3 - "$1" <<'PY'
import struct, sys
data = open(sys.argv[1], 'rb').read()
if data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
    sys.exit(f"{sys.argv[1]}: not an ELF64 little-endian file")
shoff, = struct.unpack_from('<Q', data, 0x28)
shentsize, shnum = struct.unpack_from('<HH', data, 0x3A)
sections = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize) for i in range(shnum)]
for name, stype, flags, addr, off, size, link, info, align, entsize in sections:
    if stype != 6:  # SHT_DYNAMIC
        continue
    stroff = sections[link][4]
    for pos in range(off, off + size, 16):
        tag, val = struct.unpack_from('<qQ', data, pos)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            end = data.index(b'\0', stroff + val)
            print(data[stroff + val:end].decode())
PY
}

unresolved=()
check_lib() { # lib [print] -> appends "lib: dep" to unresolved for every dependency ldd cannot find
  local lib="$1" print="${2:-}" out dep
  out="$(ldd "$dest/$lib" 2>&1)" || true
  if [ -n "$print" ]; then
    say "NEEDED by $lib (resolved with LD_LIBRARY_PATH=$dest):"
    while read -r dep; do
      local where
      # ldd prints "name => path (addr)", "name => not found", or for the loader itself "/path/name (addr)".
      where="$(awk -v d="$dep" '$1 == d && $2 == "=>" { print $3; exit }
                                $1 ~ ("/" d "$") { print $1; exit }' <<<"$out")"
      if [ "$dep" = libcuda.so.1 ] && [ "$where" = not ]; then
        where="not found here: the NVIDIA driver's library, provided by the host at run time"
      fi
      [ "$where" = not ] && where="NOT FOUND"
      printf '  %-22s => %s\n' "$dep" "${where:-?}"
    done < <(needed_of "$dest/$lib")
  fi
  while read -r dep; do
    [ "$dep" = libcuda.so.1 ] && continue
    unresolved+=("$lib: $dep")
  done < <(awk '$2 == "=>" && $3 == "not" { print $1 }' <<<"$out")
}

check_lib libonnxruntime_providers_shared.so print
check_lib libonnxruntime_providers_cuda.so print
if [ "$provider_only" = 0 ]; then
  for entry in "${wheels[@]:1}"; do
    read -r -a patterns <<<"${entry#*|}"
    for pat in "${patterns[@]}"; do
      for f in "$dest"/$pat; do check_lib "$(basename "$f")"; done
    done
  done
  say "all CUDA libraries' dependencies checked (ldd, transitively)"
else
  # Loaded with dlopen at run time rather than NEEDED, so ldd cannot see them: look them up like the loader would.
  for lib in libcudnn.so.9 libnvrtc.so.13; do
    found=0
    for d in "${ld_dirs[@]}"; do [ -n "$d" ] && [ -e "$d/$lib" ] && found=1; done
    if [ "$found" = 0 ] && [ -x "$ldconfig_bin" ] && "$ldconfig_bin" -p 2>/dev/null | grep -q "$lib "; then found=1; fi
    [ "$found" = 1 ] || say "warning: $lib is not on LD_LIBRARY_PATH or in ld.so.cache: models with convolutions" \
      "(cuDNN) or run-time compiled kernels (NVRTC) will fail; install it or run without --provider-only"
  done
fi

if [ "${#unresolved[@]}" -gt 0 ]; then
  echo "cuda-provider: error: unresolved shared-library dependencies (with LD_LIBRARY_PATH=$LD_LIBRARY_PATH):" >&2
  printf '  %s\n' "${unresolved[@]}" >&2
  if [ "$provider_only" = 1 ]; then
    echo "  --provider-only expects CUDA 13 and cuDNN 9 on this host; run without it to install them from PyPI." >&2
  fi
  exit 1
fi
if [ "$driver_lib_found" = 0 ]; then
  say "note: no libcuda.so.1 on this host (no NVIDIA driver): fine for a build stage;" \
    "the GPU host provides it (driver >= 580)"
fi
say "every NEEDED entry resolves (libcuda.so.1 aside: the driver provides it)"

# --- check: a real session on the CUDA provider ---------------------------------------------------------------------
if [ "$check" = 1 ]; then
  pkg_root="$(cd "$dest/../../../.." && pwd)"
  if [ "$(node -p "try { require('$pkg_root/package.json').name } catch { '' }")" != onnxruntime-node ]; then
    die "--check needs --dest to be an onnxruntime-node binding directory (bin/napi-v*/linux/x64); $dest is not"
  fi
  stub_used=0
  if [ "$driver_lib_found" = 0 ]; then
    # No driver here. A stand-in libcuda.so.1 (like the toolkit's stubs/libcuda.so: the one driver symbol the provider
    # links, returning CUDA_ERROR_STUB_LIBRARY) lets the loader finish, so the session gets as far as the CUDA
    # runtime's driver check. It lives in a temporary directory for this check only and is never installed.
    command -v cc >/dev/null \
      || die "--check on a host without an NVIDIA driver needs a C compiler (cc) for the stand-in libcuda.so.1"
    stub_dir="$(mktemp -d)"
    trap 'rm -rf "$stub_dir"' EXIT
    echo 'int cuTensorMapEncodeTiled(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }' >"$stub_dir/stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub_dir/libcuda.so.1" "$stub_dir/stub.c"
    export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$stub_dir"
    stub_used=1
  fi
  say "check: onnxruntime-node session with executionProviders ['cuda'] on a one-Conv model"
  set +e
  out="$(ORT_PKG="$pkg_root" node - 2>&1 <<'JS'
// A one-node ONNX model (Conv, 1x1x4x4 input, 3x3 all-ones kernel), protobuf-encoded by hand so the check needs no
// model file: with all-ones input every output is 9.
const ort = require(process.env.ORT_PKG);
const varint = (n) => {
  const out = [];
  do {
    out.push((n & 0x7f) | (n > 0x7f ? 0x80 : 0));
    n = Math.floor(n / 128);
  } while (n > 0);
  return Buffer.from(out);
};
const bytes = (field, ...parts) => {
  const body = Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
  return Buffer.concat([varint((field << 3) | 2), varint(body.length), body]);
};
const int = (field, v) => Buffer.concat([varint(field << 3), varint(v)]);
const FLOAT = 1;
// ValueInfoProto { name, type: TypeProto { tensor_type { elem_type, shape { dim { dim_value }... } } } }
const shapeOf = (dims) => bytes(2, ...dims.map((d) => bytes(1, int(1, d))));
const valueInfo = (name, dims) => Buffer.concat([bytes(1, name), bytes(2, bytes(1, int(1, FLOAT), shapeOf(dims)))]);
const weight = Buffer.from(new Float32Array(9).fill(1).buffer);
const tensor = Buffer.concat([...[1, 1, 3, 3].map((d) => int(1, d)), int(2, FLOAT), bytes(8, 'W'), bytes(9, weight)]);
const node = Buffer.concat([bytes(1, 'X'), bytes(1, 'W'), bytes(2, 'Y'), bytes(4, 'Conv')]);
const graph = Buffer.concat([
  bytes(1, node),
  bytes(2, 'check'),
  bytes(5, tensor),
  bytes(11, valueInfo('X', [1, 1, 4, 4])),
  bytes(12, valueInfo('Y', [1, 1, 2, 2])),
]);
const model = Buffer.concat([int(1, 8), bytes(8, int(2, 13)), bytes(7, graph)]);
(async () => {
  const session = await ort.InferenceSession.create(model, { executionProviders: ['cuda'] });
  const x = new ort.Tensor('float32', new Float32Array(16).fill(1), [1, 1, 4, 4]);
  const { Y } = await session.run({ X: x });
  const ok = Y.dims.join('x') === '1x1x2x2' && Array.from(Y.data).every((v) => v === 9);
  const got = Array.from(Y.data).join(',');
  console.log(ok ? `CHECK-OK session on cuda ran a Conv: ${got}` : `CHECK-WRONG ${got}`);
  process.exit(ok ? 0 : 3);
})().catch((e) => {
  console.log('CHECK-ERROR ' + e.message);
  process.exit(2);
});
JS
)"
  rc=$?
  set -e
  echo "$out" | sed 's/^/  | /'
  if [ "$rc" = 0 ]; then
    say "check passed: the CUDA provider runs here"
  elif [ "$stub_used" = 1 ] \
    && grep -Eq 'CHECK-ERROR .*(cudaSetDevice|CUDA driver|no CUDA-capable device)' <<<"$out"; then
    say "check passed as far as this host allows: the provider and every CUDA library loaded; it stopped at the" \
      "CUDA driver check (no NVIDIA driver here). A GPU host with driver >= 580 runs it."
  else
    die "check failed: the session on cuda did not start (output above)"
  fi
fi

say "done. Run with: LD_LIBRARY_PATH=$dest\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} (driver >= 580 on the host)"
