#!/usr/bin/env bash
# Fill .whl/ (ignored by git) with what benchmarks/gpu/run.sh installs on the lent GPU machine, which has no
# package index: cp312 / py3 wheels, fairseq-fixed built here for CPython 3.12 and torch 2.11, el-plugins' own
# wheel, and timm's train.py (not in timm's wheel). Then checks the set (every requirement carried or on the
# machine, the call under 64 MiB: wheelset.py) and writes .whl/manifest.json.
#
#   bash benchmarks/gpu/fetch_wheels.sh [--timm-train-py PATH [--timm-train-py-source TEXT]] [--torch-venv DIR]
#
# --timm-train-py  timm's train.py from a pytorch-image-models checkout (copied to .whl/timm_train.py; without it
#                  an earlier copy is kept, and with none the GPU run skips its timm step)
# --torch-venv     a CPython 3.12 venv with torch 2.11.0 to build fairseq-fixed against (default: the one
#                  scripts/check_torch_versions.py makes, made here if missing: a 3-4 GiB download)
# Idempotent: wheels already there are kept (pip download skips them, fairseq's is built once); el-plugins' wheel
# and the manifest are made again each time, from the working tree as it is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
cd "$repo"
whl="$repo/.whl"
venvs="${EL_TORCH_VENVS:-$HOME/.cache/el-plugins/torch-venvs}"
torch_venv="$venvs/torch-2.11.0-py3.12"
train_py="" train_py_source=""
die() { echo "fetch_wheels.sh: $*" >&2; exit 2; }
say() { echo "[fetch-wheels] $*"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --timm-train-py) train_py=${2:?--timm-train-py needs a path}; shift 2 ;;
    --timm-train-py-source) train_py_source=${2:?}; shift 2 ;;
    --torch-venv) torch_venv=${2:?--torch-venv needs a folder}; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
git check-ignore -q .whl/x.whl || die ".whl/ is not ignored by git here (.gitignore names /.whl/)"
mkdir -p "$whl"

# Exact pins: the versions this project's .venv runs (timm, fairseq's needs), the peers' current releases.
PY3_WHEELS="liger-kernel==0.8.5 cut-cross-entropy==25.1.1 timm==1.0.31 hydra-core==1.3.2 omegaconf==2.3.0
  pycparser==3.12"
CP312_WHEELS="bitarray==3.12.3 cffi==2.1.1"
SDIST_ONLY="antlr4-python3-runtime==4.9.3"   # hydra-core's and omegaconf's parser runtime: pure Python, no wheel
FAIRSEQ="fairseq-fixed==0.12.3.1"

pip_q() { "$@" 2>&1 | sed '/^WARNING: Location/d'; }
have() { ls "$whl"/$1 >/dev/null 2>&1; }   # a glob such as 'timm-1.0.31-*.whl'
wheel_glob() { local name=${1%%==*} version=${1##*==}; echo "${name//-/_}-${version}-*.whl"; }

for spec in $PY3_WHEELS $CP312_WHEELS; do
  if have "$(wheel_glob "$spec")"; then continue; fi
  say "downloading $spec"
  pip_q python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$whl" "$spec"
done
for spec in $SDIST_ONLY; do
  if have "$(wheel_glob "$spec")"; then continue; fi
  say "building a wheel of $spec (its sdist; pure Python)"
  pip_q python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$whl" "$spec"
done

# fairseq-fixed: C++ and Cython extensions, built against torch 2.11.0 on CPython 3.12 (the machine's pair)
if ! have "fairseq_fixed-0.12.3.1-cp312-*.whl"; then
  if [ ! -x "$torch_venv/bin/python" ]; then
    say "no torch 2.11.0 venv at $torch_venv: making it (scripts/check_torch_versions.py, a 3-4 GiB download)"
    python3 scripts/check_torch_versions.py --prepare-only --venvs "$(dirname "$torch_venv")" 2.11.0@3.12
  fi
  build="$(dirname "$torch_venv")/fairseq-build-py3.12"
  if [ ! -x "$build/bin/python" ]; then
    say "making the build venv $build (cython, setuptools; torch and numpy from $torch_venv)"
    base=$(readlink -f "$torch_venv/bin/python"); "$base" -m venv "$build"
    site=$("$build/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$torch_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$site/torch-venv.pth"
    pip_q "$build/bin/python" -m pip install -q --disable-pip-version-check cython==3.3.2 setuptools wheel
  fi
  torch_version=$("$build/bin/python" -c 'import torch; print(torch.__version__)')
  say "building $FAIRSEQ for CPython 3.12 / torch $torch_version (a few minutes)"
  tmp=$(mktemp -d)
  # from its sdist: PyPI's cp312 wheel of it was built (2024-11) against an older torch, and its C++ extensions
  # link against one torch's own symbols
  pip_q "$build/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    --no-binary fairseq-fixed -w "$tmp" "$FAIRSEQ"
  mv "$tmp"/fairseq_fixed-*.whl "$whl"/ && rmdir "$tmp"
fi

# el-plugins itself (the run puts this checkout first on PYTHONPATH; the wheel brings el_plugins.pth and the
# console scripts)
rm -f "$whl"/el_plugins-*.whl
say "building el-plugins' wheel from the working tree"
pip_q python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$whl" "$repo"

if [ -n "$train_py" ]; then
  [ -f "$train_py" ] || die "--timm-train-py: no such file '$train_py'"
  grep -q "timm" "$train_py" || die "--timm-train-py: '$train_py' does not look like timm's train.py"
  cp "$train_py" "$whl/timm_train.py"
  printf '%s\n' "${train_py_source:-$train_py}" > "$whl/timm_train.py.source"
fi
[ -f "$whl/timm_train.py" ] ||
  say "NOTE: no .whl/timm_train.py: the GPU run will skip its timm step (--timm-train-py PATH)"

python3 "$here/wheelset.py" manifest
say "done: name .whl in the call's carry; the command: bash benchmarks/gpu/run.sh"
