"""Running fairseq-train from the el-* tools: its output mirrored to a log file, a progress bar of its updates,
the per-epoch validation rows parsed from it. Failures are :class:`el_plugins.commands.CommandError`."""
import re
import subprocess
import sys

from tqdm import tqdm

from el_plugins.commands import CommandError, failure_cause, start_program, stopped_on_error

__all__ = ['train_with_progress']

_VALID = re.compile(r"\| valid on 'valid' subset \|.*")


def train_with_progress(cmd, log_path, total_updates, desc, env=None, progress=True, max_epoch=None):
    """Run fairseq-train (its own bar off: ``--no-progress-bar``), mirror its output to log_path, show a
    progress bar of its updates (``progress=False``: none); returns the per-epoch validation rows. Interrupted
    (Ctrl-C, SIGTERM, an error), it stops fairseq-train too: nothing goes on writing into the run's folder.

    total_updates: the bar's length; or None with ``max_epoch``: epochs times the updates per epoch, read from
    fairseq's first ``epoch 001: k / n`` line."""
    curve, lines = [], []
    with open(log_path, "w") as log, tqdm(total=total_updates, desc=desc, unit="upd", file=sys.stderr,
                                          dynamic_ncols=True, disable=not progress) as bar:
        proc = start_program(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        with stopped_on_error(proc):
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                del lines[:-200]
                if bar.total is None and max_epoch:
                    per_epoch = re.search(r"epoch \d+:\s+\d+ / (\d+)", line)
                    if per_epoch:
                        bar.total = int(per_epoch.group(1)) * max_epoch
                        bar.refresh()
                m = re.search(r"num_updates[= ](\d+)", line)
                if m:
                    done = int(m.group(1))
                    bar.update((min(done, bar.total) if bar.total else done) - bar.n)
                v = _VALID.search(line)
                if v:
                    fields = dict(re.findall(r"\| (\w+) ([-\d.]+)", v.group(0)))
                    curve.append({"epoch": int(fields["epoch"]) if "epoch" in fields else len(curve) + 1,
                                  "updates": int(fields["num_updates"]), "valid_nll_bits": float(fields["nll_loss"])})
            proc.wait()
        if proc.returncode != 0:
            raise CommandError(f"fairseq-train failed (exit {proc.returncode}): {failure_cause(''.join(lines))} "
                               f"(its output is in {log_path})")
    return curve
