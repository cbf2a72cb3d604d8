"""el-demo: label-smoothed CE vs EL on the toy corpus with the real fairseq programs (CPU is fine)."""
import argparse
import os
import re
import subprocess
import sys
import time

from el_plugins.demo.toy_corpus import write_corpus

MODEL = ["--arch", "transformer_iwslt_de_en", "--encoder-layers", "2", "--decoder-layers", "2",
         "--encoder-embed-dim", "128", "--decoder-embed-dim", "128", "--encoder-ffn-embed-dim", "256",
         "--decoder-ffn-embed-dim", "256", "--encoder-attention-heads", "4", "--decoder-attention-heads", "4"]


def tool(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def run(cmd, log_path):
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:2])} ... failed (exit {proc.returncode}); see {log_path}")
    return open(log_path).read()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    ap.add_argument("--updates", type=int, default=150, help="training updates per run (default: 150)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    raw, data_bin = os.path.join(args.out, "raw"), os.path.join(args.out, "data-bin")
    write_corpus(raw)
    run([tool("fairseq-preprocess"), "--source-lang", "src", "--target-lang", "en", "--trainpref", f"{raw}/train",
         "--validpref", f"{raw}/valid", "--testpref", f"{raw}/test", "--destdir", data_bin, "--workers", "2"],
        os.path.join(args.out, "preprocess.log"))
    rows = []
    for name, crit in (("LS-CE", ["--criterion", "label_smoothed_cross_entropy"]),
                       ("EL", ["--criterion", "label_smoothed_encouraging_loss", "--log-end", "0.5"])):
        t0 = time.time()
        print(f"training {name} for {args.updates} updates ...", flush=True)
        log = run([tool("fairseq-train"), data_bin, *MODEL, *crit, "--label-smoothing", "0.1", "--optimizer", "adam",
                   "--lr", "2e-3", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "50", "--max-tokens", "2000",
                   "--max-update", str(args.updates), "--cpu", "--no-progress-bar", "--no-epoch-checkpoints",
                   "--save-dir", os.path.join(args.out, name, "checkpoints")], os.path.join(args.out, f"train-{name}.log"))
        valid = dict(re.findall(r"\| (\w+) ([-\d.]+)", [ln for ln in log.splitlines() if "valid on" in ln][-1]))
        rows.append((name, valid["nll_loss"], valid.get("p_target", "-"), f"{time.time() - t0:.0f}s"))
    print(f"\n{'run':<8}{'valid nll (bits)':>18}{'p_target':>10}{'time':>8}")
    for r in rows:
        print(f"{r[0]:<8}{r[1]:>18}{r[2]:>10}{r[3]:>8}")


if __name__ == "__main__":
    main()
