"""kNN and linear-probe accuracy of an exported sub-net, an SDRnet (or one of its paths) or a
SimSiam run on a downstream task, with the raw-pixel and random-init baselines on the same split
and 95% intervals (the protocol of sdr_jax/eval/protocol.py, the same as routing's).

  python launch/evaluate.py --task=mnist --workdir=runs/sdr/route/mnist/best_subnet
  python launch/evaluate.py --task=mnist --workdir=runs/sdr                 # the SDRnet
  python launch/evaluate.py --task=mnist --workdir=runs/sdr --path=1,0,1,1  # one path
  python launch/evaluate.py --task=mnist --workdir=runs/simsiam
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                               "route.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Evaluation config file.",
                                          lock_config=True)
_TASK = flags.DEFINE_string("task", None, "Downstream task (see sdr_jax.data.tasks.REGISTRY).")
_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's workdir or an exported sub-net.")
_PATH = flags.DEFINE_string("path", None, "SDRnet path: an index, entries like 1,0,all,1, or all.")
flags.mark_flags_as_required(["task", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    from sdr_jax.jobs.evaluate import evaluate
    cli.run_or_fail(evaluate, _CONFIG.value, _WORKDIR.value, _TASK.value, _PATH.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
