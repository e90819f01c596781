#!/usr/bin/env bash
# cuda-check: compile every csrc/**/*.cu with nvcc to an object file (no link), so the CUDA
# kernels cannot rot on a machine without a GPU or a CUDA build of torch.
#
#   bash tools/cuda_check.sh            (what `make cuda-check` runs)
#
# The CPU torch wheel ships no CUDA headers (c10/cuda/impl/cuda_cmake_macros.h is missing), so
# the headers come from the CUDA torch wheel: it is downloaded once with pip, only its
# torch/include/ is kept, under .cache/torch-cuda-headers/<version>/ (git-ignored; reused when
# present). Objects, dependency files and logs go to .cache/cuda-check/, never into csrc/.
# A file is recompiled only when it, a header it includes, or the flags changed.
#
# Kernels include <ATen/ATen.h>, <torch/library.h> and c10/cuda headers (c10/cuda/CUDAStream.h,
# not ATen/cuda/CUDAContext.h: the latter pulls cuBLAS/cuSPARSE headers that a bare CUDA toolkit
# may lack), never torch/extension.h (no Python.h here).
#
# Environment:
#   MAX_JOBS                 files compiled at once (default 2)
#   NVCC                     nvcc to use (default: the one on PATH)
#   CUDA_CHECK_ARCH          GPU arch to compile for (default sm_90; one arch keeps CI fast)
#   CUDA_CHECK_FORCE=1       recompile everything, ignoring up-to-date objects
#   TORCH_CUDA_HEADERS_VERSION  CUDA torch wheel the headers come from (default 2.14.1)
#   TORCH_CUDA_HEADERS_DIR   use this torch include dir instead of downloading one
#   PYTHON                   python whose pip downloads the wheel (default .venv/bin/python)
#
# Exit status: 0 when every file compiled (or nvcc is absent: skipped), 1 when any failed,
# 2 when the headers could not be obtained.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" || ! -x "$NVCC" ]]; then
  echo "cuda-check: skipped: nvcc not found (set NVCC or put nvcc on PATH to compile csrc/**/*.cu)"
  exit 0
fi

MAX_JOBS="${MAX_JOBS:-2}"
[[ "$MAX_JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "cuda-check: MAX_JOBS must be a positive integer, got '$MAX_JOBS'" >&2; exit 2; }
ARCH="${CUDA_CHECK_ARCH:-sm_90}"
HDR_VERSION="${TORCH_CUDA_HEADERS_VERSION:-2.14.1}"
CACHE="$REPO/.cache"
OBJ_DIR="$CACHE/cuda-check"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
mkdir -p "$CACHE" "$OBJ_DIR"

# ------------------------------------------------------------------ torch CUDA headers
fetch_headers() {  # $1: destination dir (gets include/)
  local dest="$1" tmp rc=0
  tmp="$(mktemp -d "$CACHE/.torch-cuda-headers.XXXXXX")"
  fetch_headers_into "$dest" "$tmp" || rc=$?
  rm -rf "$tmp"  # the ~0.5 GB wheel is not kept
  return $rc
}

fetch_headers_into() {  # $1: destination dir, $2: scratch dir
  local dest="$1" tmp="$2"
  echo "cuda-check: fetching torch==$HDR_VERSION (CUDA wheel) headers into ${dest#"$REPO"/}"
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "torch==$HDR_VERSION" -d "$tmp/wheel" \
      >"$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "cuda-check: could not download torch==$HDR_VERSION; set TORCH_CUDA_HEADERS_DIR to a CUDA torch's include dir" >&2
    return 1
  fi
  if ! "$PYTHON" - "$tmp/wheel" "$tmp/include" <<'EOF'
import glob, os, sys, zipfile
wheel_dir, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(wheel_dir, "torch-*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one torch wheel in {wheel_dir}, found {wheels}")
prefix = "torch/include/"
n = 0
with zipfile.ZipFile(wheels[0]) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/") or ".." in name.split("/"):
            continue
        target = os.path.join(out, name[len(prefix):])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            dst.write(src.read())
        n += 1
if n == 0:
    sys.exit(f"{wheels[0]} has no {prefix}")
print(f"cuda-check: extracted {n} header files")
EOF
  then
    return 1
  fi
  if [[ ! -f "$tmp/include/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
    echo "cuda-check: torch==$HDR_VERSION wheel has no c10/cuda/impl/cuda_cmake_macros.h: not a CUDA build?" >&2
    return 1
  fi
  mkdir -p "$dest" || return 1
  rm -rf "$dest/include"
  mv "$tmp/include" "$dest/include" || return 1  # complete or absent: never half-extracted
}

if [[ -n "${TORCH_CUDA_HEADERS_DIR:-}" ]]; then
  TORCH_INC="$TORCH_CUDA_HEADERS_DIR"
else
  HDR_ROOT="$CACHE/torch-cuda-headers/$HDR_VERSION"
  TORCH_INC="$HDR_ROOT/include"
  if [[ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
    # serialize concurrent first runs; re-check under the lock
    exec 9>"$CACHE/.torch-cuda-headers.lock"
    flock 9
    if [[ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
      fetch_headers "$HDR_ROOT" || exit 2
    fi
    flock -u 9
    exec 9>&-
  fi
fi
if [[ ! -f "$TORCH_INC/c10/cuda/impl/cuda_cmake_macros.h" ]]; then
  echo "cuda-check: $TORCH_INC is not a CUDA torch include dir (no c10/cuda/impl/cuda_cmake_macros.h)" >&2
  exit 2
fi

# ------------------------------------------------------------------ flags
ABI="$("$PYTHON" -c 'import torch; print(int(torch.compiled_with_cxx11_abi()))' 2>/dev/null || echo 1)"
FLAGS=(
  -c -std=c++20 "-arch=$ARCH"
  -DRECIS_COMPAT_WITH_CUDA -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H
  "-D_GLIBCXX_USE_CXX11_ABI=$ABI"
  # as torch.utils.cpp_extension passes them to nvcc
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  --expt-relaxed-constexpr -Xcompiler -fPIC
  -I "$REPO/csrc"
  -isystem "$TORCH_INC" -isystem "$TORCH_INC/torch/csrc/api/include"
)
NVCC_VERSION="$("$NVCC" --version | tail -1)"

mapfile -t SOURCES < <(find csrc -name '*.cu' -type f | LC_ALL=C sort)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "cuda-check: no csrc/**/*.cu files; nothing to compile"
  exit 0
fi
echo "cuda-check: $NVCC_VERSION, arch $ARCH, torch headers ${TORCH_INC#"$REPO"/}, ${#SOURCES[@]} file(s), MAX_JOBS=$MAX_JOBS"

# ------------------------------------------------------------------ compile
up_to_date() {  # $1 obj, $2 dep file, $3 cmd file, $4 wanted cmd
  local obj="$1" dep="$2" cmdf="$3" want="$4" f
  [[ "${CUDA_CHECK_FORCE:-0}" != 1 && -f "$obj" && -f "$dep" && -f "$cmdf" ]] || return 1
  [[ "$(cat "$cmdf")" == "$want" ]] || return 1
  # make-style depfile: "obj: src hdr hdr \" ...; every prerequisite must exist and be older
  while read -r f; do
    [[ -z "$f" ]] && continue
    [[ -e "$f" && ! "$f" -nt "$obj" ]] || return 1
  done < <(sed -e '1s/^[^:]*://' -e 's/\\$//' "$dep" | tr -s ' \t' '\n\n')
  return 0
}

compile_one() {  # $1 source (relative to repo); writes $OBJ_DIR/<rel>.{o,d,log,cmd,status}
  local src="$1" rel base obj dep log cmdf want start rc
  rel="${src#csrc/}"
  base="$OBJ_DIR/${rel%.cu}"
  obj="$base.o" dep="$base.d" log="$base.log" cmdf="$base.cmd"
  mkdir -p "$(dirname "$base")"
  want="$NVCC_VERSION|${FLAGS[*]}"
  if up_to_date "$obj" "$dep" "$cmdf" "$want"; then
    echo "ok cached" >"$base.status"
    printf 'cuda-check:   %-44s ok (up to date)\n' "$src"
    return 0
  fi
  rm -f "$obj" "$cmdf"
  start=$SECONDS
  rc=0
  "$NVCC" "${FLAGS[@]}" -MD -MF "$dep" "$REPO/$src" -o "$obj" >"$log" 2>&1 || rc=$?
  if [[ $rc -eq 0 ]]; then
    printf '%s' "$want" >"$cmdf"
    echo "ok" >"$base.status"
    printf 'cuda-check:   %-44s ok (%ds)\n' "$src" $((SECONDS - start))
  else
    rm -f "$obj"
    echo "FAILED" >"$base.status"
    printf 'cuda-check:   %-44s FAILED (%ds, nvcc exit %d)\n' "$src" $((SECONDS - start)) "$rc"
  fi
}

T0=$SECONDS
running=0
for src in "${SOURCES[@]}"; do
  if ((running >= MAX_JOBS)); then
    wait -n || true
    running=$((running - 1))
  fi
  compile_one "$src" &
  running=$((running + 1))
done
wait || true

ok=0 cached=0 failed=()
for src in "${SOURCES[@]}"; do
  rel="${src#csrc/}"
  base="$OBJ_DIR/${rel%.cu}"
  status="$(cat "$base.status" 2>/dev/null || true)"
  if [[ "$status" == ok* ]]; then
    ok=$((ok + 1))
    [[ "$status" == "ok cached" ]] && cached=$((cached + 1))
  else
    failed+=("$src")
  fi
  rm -f "$base.status"
done

for src in "${failed[@]}"; do
  rel="${src#csrc/}"
  log="$OBJ_DIR/${rel%.cu}.log"
  echo
  echo "---------------------------------------------------------------- nvcc: $src"
  if [[ -f "$log" ]]; then
    # errors first; the full log can be long (template back-traces)
    if grep -q -E 'error' "$log"; then
      grep -n -E -A3 'error' "$log" | head -n 80
      echo "(full log: ${log#"$REPO"/})"
    else
      tail -n 80 "$log"
    fi
  else
    echo "(no log: the compile job did not run)"
  fi
done

echo "cuda-check: $ok ok ($cached up to date), ${#failed[@]} failed, of ${#SOURCES[@]} .cu file(s) in $((SECONDS - T0))s (objects in ${OBJ_DIR#"$REPO"/})"
[[ ${#failed[@]} -eq 0 ]]
