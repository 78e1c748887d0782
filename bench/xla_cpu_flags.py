"""Does an XLA:CPU flag speed up the demo's SimSiam step? Each flag set in its own process.

The demo's step (ResNet-18 x0.25, 16x16, batch 64: `configs/pipeline_mosaic.py`) under the
default flags and under each candidate in `XLA_FLAGS`, in rounds (every set once per round, so
load drift hits all alike); prints the median ms/step per set and its ratio to the default.
The flags are XLA's own (strings of jaxlib's libjax_common.so); a set that fails to compile or
run is reported as such.

  python bench/xla_cpu_flags.py                       # 2 rounds, 20 timed steps each
  python bench/xla_cpu_flags.py --rounds=3 --flags="--xla_cpu_use_onednn=true"
"""
import argparse
import os
import subprocess
import sys

import numpy as np

CANDIDATES = (
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_use_thunk_runtime=false",
)

CHILD = """
import sys, time
sys.path.insert(0, "bench")
from train_step import step_images_per_s
rate, compile_s = step_images_per_s("resnet18", 0.25, "small", {size}, {batch}, {steps})
print(f"RESULT {{1000 * {batch} / rate:.2f}} {{compile_s:.2f}}")
"""


def run_child(flags: str, size: int, batch: int, steps: int) -> tuple[float, float] | str:
    env = dict(os.environ, XLA_FLAGS=" ".join(filter(None, [os.environ.get("XLA_FLAGS", ""),
                                                             flags])))
    proc = subprocess.run([sys.executable, "-c", CHILD.format(size=size, batch=batch,
                                                               steps=steps)],
                          env=env, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            ms, compile_s = line.split()[1:]
            return float(ms), float(compile_s)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return f"failed: {tail[:120]}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", default=None,
                        help="one candidate flag set (default: the built-in list)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    sets = ("", args.flags) if args.flags is not None else CANDIDATES
    times: dict[str, list[float]] = {s: [] for s in sets}
    compiles: dict[str, list[float]] = {s: [] for s in sets}
    failures: dict[str, str] = {}
    for _ in range(args.rounds):
        for flags in sets:
            if flags in failures:
                continue
            result = run_child(flags, args.image_size, args.batch, args.steps)
            if isinstance(result, str):
                failures[flags] = result
            else:
                times[flags].append(result[0])
                compiles[flags].append(result[1])
    base = float(np.median(times[""]))
    print(f"SimSiam step, ResNet-18 x0.25, {args.image_size}x{args.image_size}, batch "
          f"{args.batch}, {args.rounds} rounds x {args.steps} steps, {os.cpu_count()} cores")
    print(f"{'XLA_FLAGS':<48} {'ms/step':>8} {'vs default':>10} {'compile s':>10}")
    for flags in sets:
        name = flags or "(default)"
        if flags in failures:
            print(f"{name:<48} {failures[flags]}")
            continue
        ms = float(np.median(times[flags]))
        print(f"{name:<48} {ms:>8.1f} {ms / base:>9.2f}x {np.median(compiles[flags]):>10.1f}")


if __name__ == "__main__":
    main()
