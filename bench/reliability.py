"""Does a tiny training run survive what happens to real ones? One row per fault:

  sigkill      SIGKILL at a random step (no chance to save), then the same command
  sigterm      SIGTERM at a random step (the run saves and exits 143), then the same command
  corrupt      the latest checkpoint of a finished run truncated, then the same command
  nan          base_lr=1e8 (the run stops: non-finite), then a sane lr with the change allowed

and prints: the faulty run's exit status, how many of the checkpoints it left restore (intact and
finite), whether the rerun finished, the step it resumed from, steps lost (steps run before the
fault that were run again), and the max abs difference of the final params from an uninterrupted
run (0 = bit-exact).

  python bench/reliability.py [--steps=12] [--seed=0] [--workdir=/tmp/reliability]

Runs `launch/train.py --config=configs/simsiam_mosaic.py:tiny` as subprocesses (on mosaic/small,
built on first use) under nice 19.
"""
import argparse
import glob
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from sdr_jax.core.errors import SDRError  # noqa: E402
from sdr_jax.train import checkpoint  # noqa: E402


def command(workdir, steps, *overrides):
    return [sys.executable, os.path.join(REPO, "launch/train.py"),
            "--config=configs/simsiam_mosaic.py:tiny", f"--workdir={workdir}",
            f"--config.train.num_steps={steps}", "--config.train.log_every=1",
            "--config.train.checkpoint_every=3", "--config.eval.knn_tasks=()", *overrides]


def run(cmd, *, signal_at=None, signum=None):
    """(exit status, last step printed, step resumed from, output); sends `signum` once the run
    printed step `signal_at`."""
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=REPO)
    lines, last, resumed = [], 0, 0
    for line in proc.stdout:
        lines.append(line)
        if m := re.match(r"step (\d+)/", line):
            last = int(m.group(1))
            if signal_at is not None and last >= signal_at:
                proc.send_signal(signum)
                signal_at = None
        if m := re.search(r"resuming at step (\d+)", line):
            resumed = int(m.group(1))
    return proc.wait(), last, resumed, "".join(lines)


def final_params(workdir):
    return jax.tree.leaves(checkpoint.load_run(workdir)[1]["params"])


def intact_checkpoints(workdir) -> str:
    """'k/n': how many of the n checkpoints on disk restore (load_run checks they are finite)."""
    root = f"{workdir}/checkpoints"
    steps = [int(s) for s in os.listdir(root) if s.isdigit()] if os.path.isdir(root) else []
    intact = 0
    for step in steps:
        try:
            checkpoint.load_run(workdir, step)
            intact += 1
        except SDRError:
            pass
    return f"{intact}/{len(steps)}"


def max_abs_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/reliability")
    args = parser.parse_args()
    os.nice(19)  # the training subprocesses inherit it
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    base = lambda name: os.path.join(args.workdir, name)  # noqa: E731

    start = time.time()
    status, *_ = run(command(base("straight"), args.steps))
    assert status == 0, "the uninterrupted run failed"
    want = final_params(base("straight"))
    rows = []

    def finish(case, workdir, fault_status, last_before, *rerun_overrides, note=""):
        intact = intact_checkpoints(workdir)
        status, _, resumed, out = run(command(workdir, args.steps, *rerun_overrides))
        recovered = status == 0
        diff = max_abs_diff(final_params(workdir), want) if recovered else float("nan")
        rows.append((case, fault_status, intact, recovered, resumed,
                     max(0, last_before - resumed), diff, note))
        if not recovered:
            print(out[-2000:], file=sys.stderr)

    for case, signum in (("sigkill", signal.SIGKILL), ("sigterm", signal.SIGTERM)):
        at = rng.randint(2, args.steps - 2)
        status, last, _, _ = run(command(base(case), args.steps), signal_at=at, signum=signum)
        finish(case, base(case), status, last, note=f"signal after step {at} printed")

    shutil.copytree(base("straight"), base("corrupt"))
    latest = max(int(s) for s in os.listdir(base("corrupt") + "/checkpoints") if s.isdigit())
    data = max(glob.glob(f"{base('corrupt')}/checkpoints/{latest}/state/**/d/*", recursive=True),
               key=os.path.getsize)
    os.truncate(data, os.path.getsize(data) // 2)
    finish("corrupt", base("corrupt"), "-", latest, note=f"step {latest} truncated")

    status, last, _, out = run(command(base("nan"), args.steps, "--config.optim.base_lr=1e8"))
    stop = re.search(r"non-finite training \w+ \w+ step (\d+)", out)
    kept = re.search(r"last verified checkpoint \(step (\d+)\)", out)
    finish("nan", base("nan"), status, last, "--config.train.allow_config_change=True",
           note=f"stopped at step {stop.group(1) if stop else '?'}, verified checkpoint kept: "
                f"{kept.group(1) if kept else 'none'}; rerun with base_lr 0.05")

    header = ("case", "fault exit", "ckpts intact", "recovered", "resumed from", "steps lost",
              "max |dparams|", "note")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for case, fault_status, intact, recovered, resumed, lost, diff, note in rows:
        print(f"{case} | {fault_status} | {intact} | {'yes' if recovered else 'NO'} | {resumed} | "
              f"{lost} | {diff:.3g} | {note}")
    print(f"({time.time() - start:.0f} s, {args.steps} steps, seed {args.seed})")


if __name__ == "__main__":
    main()
