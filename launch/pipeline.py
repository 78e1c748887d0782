"""The whole SDR pipeline: SimSiam -> clustering -> progressive SDR -> routing on every task.

  python launch/pipeline.py --config=configs/pipeline_mosaic.py --workdir=runs/pipeline
  python launch/pipeline.py --config=configs/pipeline_mosaic.py:tiny --workdir=/tmp/pipeline

Writes DIR/{simsiam,cluster,sdr,sdr/route/<task>,baseline}/ and DIR/summary.{txt,json}; run the
same command again to resume an interrupted run (finished stages are skipped). See
sdr_jax/jobs/pipeline.py.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Pipeline config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the whole run.")
_UNTIL = flags.DEFINE_enum("until", None, ["simsiam", "cluster", "sdr", "route", "baseline"],
                           "Stop after this stage (default: run every stage and summarise).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    from sdr_jax.jobs.pipeline import run
    cli.run_or_fail(run, _CONFIG.value, _WORKDIR.value, until=_UNTIL.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
