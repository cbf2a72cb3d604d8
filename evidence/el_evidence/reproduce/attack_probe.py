"""python -m el_evidence.reproduce.attack_probe: how strong and how costly are the attacks el-reproduce mnist
could use? A probe on a few test images.

    python -m el_evidence.reproduce.attack_probe --data data --out results/mnist/attack_probe.json

Trains one model per variant exactly as ``el-reproduce mnist`` does (seed 0), then attacks the first
``--images`` MNIST test images at L-inf eps 0.1 and 0.2 with torchattacks' FGSM, PGD (as el-reproduce
runs it), APGD with the cross-entropy and with the DLR loss (100 steps each), and the standard AutoAttack
(APGD-CE, APGD-T, FAB-T, Square), recording each one's accuracy and seconds. This is the measurement
behind el-reproduce's choice of attack (README, "Does it work?"). Errors, progress bars (``--no-progress``)
and messages as every el-* command (el_plugins.commands), on stderr.
"""
import argparse
import logging
import sys
import time

from el_plugins import commands
from el_plugins.devices import add_device_argument
from el_evidence.reproduce.options import load_data, usable_cores
from el_evidence.reproduce.paper import VARIANTS

PROG = "python -m el_evidence.reproduce.attack_probe"
logger = logging.getLogger(__name__)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data", help="the data folder of el-data mnist (default: data)")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--images", type=int, default=200, help="attack the first N MNIST test images (default: 200)")
    ap.add_argument("--variants", default="ce,el", help="comma-separated subset of " + ",".join(VARIANTS))
    add_device_argument(ap)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: the usable cores, at most 8)")
    commands.add_progress_argument(ap)
    args = ap.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not args.variants or any(v not in VARIANTS for v in args.variants):
        ap.error(f"--variants takes a comma-separated subset of {','.join(VARIANTS)}, got {args.variants}")
    if not 1 <= args.images <= 10000:
        ap.error(f"--images must be in [1, 10000], got {args.images}")
    if args.threads is not None and args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv=None):
    args = parse_args(argv)
    commands.setup_logging(PROG, also=("el_evidence",))
    from el_evidence.data import DataError

    return commands.run(PROG, lambda: _probe(args), errors=(DataError, OSError))


def _probe(args) -> int:
    import numpy as np
    import torch
    import torchattacks
    from tqdm import tqdm

    from el_plugins.files import write_json
    from el_evidence.reproduce import mnist

    threads = args.threads or min(usable_cores(), 8)
    if args.device.type == "cpu":
        torch.set_num_threads(threads)
    data = load_data(args.data, logger.info)
    s = mnist.Settings(device=str(args.device), threads=threads)
    x = mnist.images_tensor(data[("mnist", "train")][0], args.device)
    y = torch.from_numpy(data[("mnist", "train")][1].astype(np.int64)).to(args.device)
    xa = mnist.images_tensor(data[("mnist", "test")][0][:args.images], args.device)
    ya = torch.from_numpy(data[("mnist", "test")][1][:args.images].astype(np.int64)).to(args.device)
    out = {"images": args.images, "seed": 0, "device": str(args.device), "threads": threads,
           "torchattacks": torchattacks.__version__, "settings": "el-reproduce mnist defaults", "variants": {}}
    for variant in args.variants:
        steps = s.epochs * -(-len(x) // s.batch_size)
        with tqdm(total=steps, desc=f"{variant} train", disable=not args.progress, file=sys.stderr, leave=False) as bar:
            model, info = mnist.train(variant, 0, x, y, s, bar)
        rows = {"clean": {"accuracy": mnist.attack_accuracy(model, None, xa, ya), "seconds": 0.0}}
        for eps in mnist.EPSILONS:
            attacks = {
                "fgsm": torchattacks.FGSM(model, eps=eps),
                f"pgd{s.pgd_steps}": torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / s.pgd_steps, steps=s.pgd_steps,
                                                      random_start=True),
                "apgd_ce": torchattacks.APGD(model, eps=eps, steps=100, loss="ce", seed=0),
                "apgd_dlr": torchattacks.APGD(model, eps=eps, steps=100, loss="dlr", seed=0),
                "autoattack": torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10,
                                                      seed=0),
            }
            for name, attack in attacks.items():
                torch.manual_seed(0)
                started = time.perf_counter()
                accuracy = mnist.attack_accuracy(model, attack, xa, ya, batch=len(xa))
                rows[f"{name}_{eps}"] = {"accuracy": accuracy, "seconds": round(time.perf_counter() - started, 2)}
                logger.info(f"{variant} {name} eps {eps}: {accuracy:.1f}% in {rows[f'{name}_{eps}']['seconds']:.1f} s")
        out["variants"][variant] = {"train_seconds": round(info["train_seconds"], 1), "attacks": rows}
    write_json(args.out, out)
    logger.info(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
