"""Clustering job: features of a SimSiam run -> path-shaped clusters for SDR -> reports.

  python launch/cluster.py --config=configs/cluster_mosaic.py --workdir=runs/cluster \
      --config.pretrain_workdir=runs/simsiam
  python launch/cluster.py --config=configs/cluster_mosaic.py:tiny --workdir=/tmp/cluster \
      --config.pretrain_workdir=/tmp/tiny

Writes <workdir>/features, assignments.npz, clusters.png, summary.txt/json; a rerun skips the
stages whose output is already there (see sdr_jax/jobs/cluster/job.py).
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Clustering config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for features, assignments, reports.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    from sdr_jax.jobs.cluster.job import run
    cli.run_or_fail(run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
