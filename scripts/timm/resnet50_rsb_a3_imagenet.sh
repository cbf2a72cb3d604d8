#!/usr/bin/env bash
# ResNet-50 on ImageNet with an A3-like "ResNet strikes back" recipe (Wightman, Touvron and Jegou 2021): the BCE
# form of EL (sigmoid EL with timm's targets: Mixup/CutMix, binarized above 0.2) in place of timm's
# BinaryCrossEntropy. Not a recipe the EL paper ran: a starting point for one.
#
#   scripts/timm/resnet50_rsb_a3_imagenet.sh --train-py path/to/pytorch-image-models/train.py --data /data/imagenet
#       [--baseline] [--log-end 0.75] [--gpus 8] [--output runs/rsb_a3] [--dry-run] [-- extra train.py options]
#
# --baseline trains timm's own loss for the same flags (BinaryCrossEntropy) instead of EL.
# A3 as the paper's table gives it: 100 epochs at 160 px, LAMB, lr 8e-3, weight decay 0.02, cosine with 5 warm-up
# epochs, batch 2048 (256 per GPU on 8), RandAugment m6/0.5, Mixup 0.1, CutMix 1.0, BCE binarized above 0.2, no
# label smoothing, no stochastic depth, no repeated augmentation, test crop 0.95 (the paper tests at 224 px: run
# timm's validate.py on the checkpoint).
# Runs timm's train.py through el-timm-train under torchrun (one process per GPU).
set -euo pipefail

train_py="" data="" baseline=0 log_end=0.75 gpus=8 output="runs/rsb_a3" dry_run=0 extra=()
die() { echo "resnet50_rsb_a3_imagenet.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --train-py) train_py=${2:?--train-py needs a path}; shift 2 ;;
    --data) data=${2:?--data needs a path}; shift 2 ;;
    --baseline) baseline=1; shift ;;
    --log-end) log_end=${2:?--log-end needs a value}; shift 2 ;;
    --gpus) gpus=${2:?--gpus needs a number}; shift 2 ;;
    --output) output=${2:?--output needs a path}; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[ -n "$train_py" ] || die "--train-py path/to/train.py is required (train.py comes with a clone of pytorch-image-models, not the timm wheel)"
[ -n "$data" ] || die "--data is required (an ImageNet folder with train/ and validation/)"
[[ "$gpus" =~ ^[1-9][0-9]*$ ]] || die "--gpus must be a positive integer, got '$gpus'"
awk -v x="$log_end" 'BEGIN { exit !(x ~ /^[0-9.]+$/ && x > 0 && x <= 1) }' || die "--log-end must be in (0, 1], got '$log_end'"
if [ "$dry_run" = 0 ]; then
  [ -f "$train_py" ] || die "--train-py: no such file '$train_py'"
  [ -d "$data" ] || die "--data: no such folder '$data'"
fi
batch=$(( (2048 + gpus - 1) / gpus ))  # the recipe's global batch of 2048

loss=(--loss el --log-end "$log_end"); name="rsb_a3-el$log_end"
[ "$baseline" = 1 ] && { loss=(); name="rsb_a3-bce"; }
cmd=(torchrun --nproc_per_node "$gpus" -m el_plugins.timm_plugin.launcher "$train_py" "$data"
  --model resnet50 --img-size 160 --epochs 100 --warmup-epochs 5 --sched cosine --opt lamb --lr 8e-3
  --weight-decay 0.02 -b "$batch" --aa rand-m6-mstd0.5-inc1 --mixup 0.1 --cutmix 1.0 --smoothing 0.0
  --bce-loss --bce-target-thresh 0.2 --drop-path 0.0 --aug-repeats 0 --reprob 0.0 --crop-pct 0.95 --amp -j 8
  --output "$output" --experiment "$name" "${loss[@]}" "${extra[@]}")
echo "${cmd[*]}"
[ "$dry_run" = 1 ] || exec "${cmd[@]}"
