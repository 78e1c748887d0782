"""Issue 12's experiment arms, then docs/RESULTS.md from their run directories.

  python launch/experiments.py --config=configs/experiments_mosaic.py --workdir=runs/exp
  python launch/experiments.py --config=configs/experiments_mosaic.py --workdir=runs/exp \
      --report_only
  python launch/experiments.py --config=configs/experiments_mosaic.py --workdir=runs/exp \
      --arms=sdr_seed0,sdr_seed1

Finished arms are skipped (run the same command again to resume). See sdr_jax/jobs/experiments.py.
"""
import shlex
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiments config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one run directory per arm.")
_ARMS = flags.DEFINE_list("arms", [], "Run only these arms (default: all, in config order).")
_REPORT = flags.DEFINE_string("report", None, "Where the report goes (default: config.report).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False,
                                 "Run nothing: only regenerate the report from the workdir.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    from sdr_jax.jobs import experiments
    config, report = _CONFIG.value, _REPORT.value or _CONFIG.value.report
    if _REPORT_ONLY.value:
        cli.run_or_fail(experiments.write_report, config, _WORKDIR.value, report)
    else:
        cli.run_or_fail(experiments.run, config, _WORKDIR.value, arms=_ARMS.value,
                                 report=report, command=shlex.join(["python", *sys.argv]))


if __name__ == "__main__":
    sys.exit(app.run(main))
