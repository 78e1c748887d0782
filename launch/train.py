"""Pre-training entry point: SimSiam (`method='simsiam'`) or SDR (`method='sdr'`).

  python launch/train.py --config=configs/simsiam_mosaic.py --workdir=runs/simsiam
  python launch/train.py --config=configs/sdr256.py --workdir=runs/imagenet/sdr256

Multi-host (TPU pods, multi-node GPU): every process runs this same command; pass
--distributed (JAX finds the coordinator on TPU/SLURM/Kubernetes) or the explicit
--coordinator_address/--num_processes/--process_id.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    config = _CONFIG.value
    if config.method == "simsiam":
        from sdr_jax.train.simsiam import train_and_evaluate
    elif config.method == "sdr":
        from sdr_jax.train.sdr import train_and_evaluate
    else:
        cli.fail(f"config.method={config.method!r} is not 'simsiam' or 'sdr'.")
    cli.run_or_fail(train_and_evaluate, config, _WORKDIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
