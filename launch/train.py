"""Training entry point: pre-training (`kind='pretrain'`, any `method.name`: SimSiam, BYOL, ...)
or progressive SDR training over a method (`kind='sdr'`).

  python launch/train.py --config=configs/simsiam_mosaic.py --workdir=runs/simsiam
  python launch/train.py --config=configs/byol_mosaic.py --workdir=runs/byol
  python launch/train.py --config=configs/sdr256.py --workdir=runs/imagenet/sdr256

Multi-host (TPU pods, multi-node GPU): every process runs this same command; pass
--distributed (JAX finds the coordinator on TPU/SLURM/Kubernetes) or the explicit
--coordinator_address/--num_processes/--process_id.
"""
import importlib
import sys

from absl import app, flags
from ml_collections import config_flags

from sdr_jax.jobs import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
flags.mark_flags_as_required(["config", "workdir"])
KINDS = ("pretrain", "sdr")  # sdr_jax/train/<kind>.py: train_and_evaluate(config, workdir)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.init_distributed()
    config = _CONFIG.value
    if config.kind not in KINDS:
        cli.fail(f"config.kind={config.kind!r}; choose one of {', '.join(KINDS)}.")
    trainer = importlib.import_module(f"sdr_jax.train.{config.kind}")
    cli.run_or_fail(trainer.train_and_evaluate, config, _WORKDIR.value)


if __name__ == "__main__":
    sys.exit(app.run(main))
