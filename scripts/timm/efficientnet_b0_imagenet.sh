#!/usr/bin/env bash
# EfficientNet-B0 on ImageNet with timm's published hyper-parameters, EL (the paper: 77.80 -> 78.28 top-1).
#
#   scripts/timm/efficientnet_b0_imagenet.sh --train-py path/to/pytorch-image-models/train.py --data /data/imagenet
#       [--baseline] [--log-end 0.75] [--gpus 2] [--output runs/effnet_b0] [--dry-run] [-- extra train.py options]
#
# --baseline trains timm's own loss (label-smoothed CE, --smoothing 0.1 default) instead of EL.
# Runs timm's train.py through el-timm-train under torchrun (one process per GPU).
set -euo pipefail

train_py="" data="" baseline=0 log_end=0.75 gpus=2 output="runs/effnet_b0" dry_run=0 extra=()
die() { echo "efficientnet_b0_imagenet.sh: $*" >&2; exit 2; }
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
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
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

loss=(--loss el --log-end "$log_end"); name="effnet_b0-el$log_end"
[ "$baseline" = 1 ] && { loss=(--loss ce); name="effnet_b0-ce"; }
cmd=(torchrun --nproc_per_node "$gpus" -m el_plugins.timm_plugin.launcher "$train_py" "$data"
  --model efficientnet_b0 -b 384 --sched step --epochs 450 --decay-epochs 2.4 --decay-rate .97
  --opt rmsproptf --opt-eps .001 -j 8 --warmup-lr 1e-6 --weight-decay 1e-5 --drop 0.2 --drop-path 0.2
  --model-ema --model-ema-decay 0.9999 --aa rand-m9-mstd0.5 --remode pixel --reprob 0.2 --amp --lr .048
  --output "$output" --experiment "$name" "${loss[@]}" "${extra[@]}")
echo "${cmd[*]}"
[ "$dry_run" = 1 ] || exec "${cmd[@]}"
