"""Routing: kNN accuracy of every sub-net of an SDRnet run on a task's held-out train images
(routing-validation), ranked; exports the best and scores it once on test next to its baselines.

  python launch/route.py --task=mnist --workdir=runs/sdr [--out=DIR] [--config.bn=running]

Writes <out or workdir>/route/<task>/{ranking.txt, ranking.json, accuracy_hist.png,
best_subnet/}; load the sub-net with `sdr_jax.models.export.load_exported(dir)`.
"""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                               "route.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Routing config file.",
                                          lock_config=True)
_TASK = flags.DEFINE_string("task", None, "Downstream task (see sdr_jax.data.tasks.REGISTRY).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of an SDRnet training run.")
_OUT = flags.DEFINE_string("out", None, "Output root (default: the run's workdir).")
flags.mark_flags_as_required(["task", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    from sdr_jax.jobs.route import route
    cli.run_or_fail(route, _CONFIG.value, _WORKDIR.value, _TASK.value, _OUT.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
