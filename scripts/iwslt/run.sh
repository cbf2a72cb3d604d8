#!/usr/bin/env bash
# The paper's IWSLT pipeline, LS-CE baseline and EL side by side, one el-plugins command per step:
#
#   scripts/iwslt/run.sh --corpus iwslt14.de-en --release ~/Downloads/de-en.tgz [--seed 1] [--gpus 1]
#                        [--losses "ce el"] [--work runs/iwslt14.de-en] [--dry-run]
#
#   1. el-prepare-iwslt        IWSLT release -> Moses tokens -> sentencepiece -> fairseq-preprocess
#   2. el-translation-train    fairseq-train with the paper's hyper-parameters (--loss ce | el)
#   3. el-average-checkpoints  the last 10 epoch checkpoints
#   4. el-bleu generate        beam 5, 128 sentences a batch; tokenized BLEU-4 (the paper's metric) and sacreBLEU,
#                              of the average and of checkpoint_best.pt (chosen by BLEU on valid), as the authors report
#
# --corpus iwslt14.de-en takes de-en.tgz of IWSLT 2014, iwslt17.fr-en takes fr-en.tgz of IWSLT 2017
# (the WIT3 / IWSLT evaluation campaign releases; download them yourself, nothing is fetched here).
set -euo pipefail

corpus="" release="" seed=1 gpus=1 losses="ce el" work="" dry=0
die() { echo "run.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) corpus=${2:?--corpus needs a value}; shift 2 ;;
    --release) release=${2:?--release needs a path}; shift 2 ;;
    --seed) seed=${2:?--seed needs a value}; shift 2 ;;
    --gpus) gpus=${2:?--gpus needs a value}; shift 2 ;;
    --losses) losses=${2:?--losses needs a value}; shift 2 ;;
    --work) work=${2:?--work needs a path}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
case "$corpus" in iwslt14.de-en|iwslt17.fr-en) ;; *) die "--corpus must be iwslt14.de-en or iwslt17.fr-en, got '$corpus'" ;; esac
[ -n "$release" ] || die "--release is required: the IWSLT release file you downloaded (de-en.tgz / fr-en.tgz)"
[[ "$seed" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '$seed'"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$gpus'"
for loss in $losses; do case "$loss" in ce|el) ;; *) die "--losses takes ce and/or el, got '$loss'" ;; esac; done
[ "$dry" = 1 ] || [ -e "$release" ] || die "--release: no such file or folder '$release'"
work=${work:-runs/$corpus}
tgt=en
data="$work/data"

step() { echo "+ $*"; [ "$dry" = 1 ] || "$@"; }
[ -d "$data/data-bin" ] && [ "$dry" = 0 ] && echo "(reusing $data/data-bin)" || step el-prepare-iwslt --release "$release" --corpus "$corpus" --out "$data"
for loss in $losses; do
  run="$work/$loss-seed$seed"
  step el-translation-train --recipe "$corpus" --data "$data/data-bin" --loss "$loss" --seed "$seed" --gpus "$gpus" --save-dir "$run"
  step el-average-checkpoints --inputs "$run" --num-epoch-checkpoints 10 --output "$run/average10.pt"
  step el-bleu generate "$data/data-bin" --path "$run/average10.pt" --beam 5 --raw-ref "$data/text/test.raw.$tgt" --lang "$tgt" --out "$run/bleu"
  step el-bleu generate "$data/data-bin" --path "$run/checkpoint_best.pt" --beam 5 --raw-ref "$data/text/test.raw.$tgt" --lang "$tgt" --out "$run/bleu-best"
done
