#!/usr/bin/env bash
# Issue 29's GPU check in one call of a lent GPU machine: the CUDA tests, the loss and features benchmarks against
# torch CE, a torch.compile'd reference EL, Liger-Kernel and Cut Cross-Entropy, a few steps of timm's train.py
# with --amp --loss el and of fairseq-train --fp16; each step time-boxed (benchmarks/gpu/check.py runs them).
#
#   bash benchmarks/gpu/run.sh                      # there: writes $OUT/gpu-results.json and $OUT/gpu-logs.txt
#   bash benchmarks/gpu/run.sh --dry-run --out DIR  # here, on a CPU: every step with tiny shapes, tests only
#                                                   # collected, nothing installed (.venv's Python)
#   bash benchmarks/gpu/run.sh --plan               # the steps and their time budgets
#   options: --budget SECONDS (default 450: the call may take 8 minutes), --only STEP,STEP, --python PY
#
# Before the call, here: bash benchmarks/gpu/fetch_wheels.sh (fills .whl/; the machine has no package index).
# The call: run(command="bash benchmarks/gpu/run.sh", carry=[".whl"], timeout_s=600). Afterwards:
#   python3 benchmarks/gpu/report.py --markdown <its gpu-results.json>   # docs/performance.md's GPU section
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd); repo=$(cd "$here/../.." && pwd)
cd "$repo" || exit 2
out=${OUT:-} dry=0 python="" args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a folder}; shift 2 ;;
    --dry-run) dry=1; args+=(--dry-run); shift ;;
    --budget|--only) args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
    --python) python=${2:?--python needs a path}; shift 2 ;;
    --plan) args+=(--plan); shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$python" ]; then
  # there: the plain python3 holds PyTorch; here (a dry run): this checkout's .venv when it has one
  if [ "$dry" = 1 ] && [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
if [ -z "$out" ] && [[ " ${args[*]} " != *" --plan "* ]]; then
  echo "run.sh: no output folder: \$OUT is unset and --out was not given" >&2; exit 2
fi
export PYTHONUNBUFFERED=1
exec "$python" "$here/check.py" ${out:+--out "$out"} --python "$python" "${args[@]}"
