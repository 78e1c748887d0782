"""The fields every training config has; `configs/*.py` start from these and change what differs.

Every value a user may change lives on the config and can be overridden from the command line
(`--config.optim.batch_size=128`); a field that does not exist is an error, not a silent no-op.
"""
from __future__ import annotations

import importlib.util
import os

from ml_collections import ConfigDict

from sdr_jax import models
from sdr_jax.errors import ConfigError
from sdr_jax.data.augment import default_aug_config


def simsiam_config(*, dataset: str, image_size: int, arch: str, width: float, stem: str,
                   proj_dim: int, pred_dim: int, split: str = "pool") -> ConfigDict:
    config = ConfigDict()
    config.method = "simsiam"
    config.seed = 0

    config.data = ConfigDict()
    config.data.dataset = dataset          # 'mosaic', 'mosaic/small', or a prepared TFDS name
    config.data.split = split
    config.data.domains = ()               # mosaic: train only on these domains (() = all)
    config.data.data_dir = ""              # '' = TFDS's default (~/tensorflow_datasets)
    config.data.image_size = image_size
    config.data.num_workers = 0            # grain worker processes (0 = in the main process)
    config.data.aug = default_aug_config(image_size)

    config.model = models.model_config(arch, width=width, stem=stem, proj_dim=proj_dim,
                                       pred_dim=pred_dim, sdr=dict(num_groups=0))

    config.optim = ConfigDict()
    config.optim.batch_size = 512          # global batch, split over all devices
    config.optim.base_lr = 0.05            # lr = base_lr * batch_size / 256, cosine decay
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-4
    config.optim.warmup_steps = 0
    config.optim.fix_pred_lr = True        # predictor keeps the peak lr (SimSiam)

    config.train = ConfigDict()
    config.train.num_epochs = 100
    config.train.num_steps = 0             # > 0 overrides num_epochs
    config.train.log_every = 100
    config.train.checkpoint_every = 1000
    config.train.keep_checkpoints = 3
    config.train.max_steps_per_run = 0     # > 0: stop (with a checkpoint) after this many steps;
                                           # the next run resumes (time-sliced jobs)
    config.train.knn_every = 0             # online kNN monitor every N steps (0 = only at the end)
    config.train.allow_config_change = False  # True: resume a workdir with other trajectory
                                           # fields (lr, steps, ...); recorded in its history

    config.eval = ConfigDict()
    config.eval.knn_tasks = ()             # downstream tasks (see sdr_jax.data.datasets.TASKS)
    config.eval.knn_k = 20
    config.eval.knn_temperature = 0.1
    config.eval.knn_max_train = 0          # cap on memory-bank size per task (0 = all)
    config.eval.batch_size = 512
    return config


def sdr_config(*, dataset: str, image_size: int, arch: str, width: float, stem: str,
               proj_dim: int, pred_dim: int, num_groups: int, stages=(0, 1, 2, 3),
               shared_fraction: float = 0.5, split: str = "pool") -> ConfigDict:
    """SimSiam's fields plus the SDRnet's groups and the progressive-training section."""
    config = simsiam_config(dataset=dataset, image_size=image_size, arch=arch, width=width,
                            stem=stem, proj_dim=proj_dim, pred_dim=pred_dim, split=split)
    config.method = "sdr"
    config.model = models.model_config(
        arch, width=width, stem=stem, proj_dim=proj_dim, pred_dim=pred_dim, kd_head=True,
        sdr=dict(num_groups=num_groups, stages=tuple(stages), shared_fraction=shared_fraction))
    config.sdr = ConfigDict()
    config.sdr.assignments = ""            # assignments.npz of launch/cluster.py (required)
    config.sdr.init_from = ""              # a SimSiam workdir of the same model size: start the
                                           # SDRnet from its weights ('' = random init)
    config.sdr.progressive = True          # False: all G^L paths from step 1 (ablation)
    config.sdr.stage_fractions = ()        # share of the steps of stages 0..L ('' = equal)
    config.sdr.paths_per_step = 0          # sub-nets trained per step (0 = one per device)
    config.sdr.subnet_batch_size = 0       # images per sub-net (0 = batch_size / paths_per_step)
    config.sdr.kd = "siamkd"               # 'siamkd' or 'l2' (the distillation ablation)
    config.sdr.kd_weight = 1.0             # λ
    return config


def cluster_config(*, sdr_config: str, extract_batch_size: int, images_per_cluster: int
                   ) -> ConfigDict:
    """The fields of a clustering job (launch/cluster.py); G and L come from `sdr_config`."""
    from sdr_jax.cluster import clustering
    config = ConfigDict()
    config.pretrain_workdir = ""           # --workdir of the SimSiam run (required)
    config.sdr_config = sdr_config         # the SDR config file the clusters are for
    config.data = ConfigDict()
    config.data.dataset = ""               # '' = the dataset/split/data_dir the run trained on
    config.data.split = ""
    config.data.data_dir = ""
    config.extract = ConfigDict()
    config.extract.batch_size = extract_batch_size
    config.cluster = clustering.get_config()
    config.report = ConfigDict()
    config.report.images_per_cluster = images_per_cluster
    config.report.seed = 0
    return config


MOSAIC_IMAGE_SIZE = 16  # the CPU recipes' input size (the pool's images are stored at 32)


def use_mosaic_recipe(config: ConfigDict) -> ConfigDict:
    """The CPU-sized recipe for the embedded pool, shared by SimSiam and SDR configs.

    Chosen on held-out *train* images of the pool's tasks (`bench/learn_probe.py`; numbers in
    docs/LEARNING.md): on 2 CPU cores what limits learning is the number of updates per
    second. 16x16 inputs run the ResNet-18 x0.25 step 2.7x faster than 32x32 (XLA:CPU), and at
    an equal number of images batch 64 learns faster than 128 or 256 with the same peak lr
    (0.05): lr = base_lr * 64 / 256.
    """
    from sdr_jax.data.datasets import TASKS
    config.data.image_size = MOSAIC_IMAGE_SIZE
    config.data.aug = default_aug_config(MOSAIC_IMAGE_SIZE)
    config.optim.batch_size = 64
    config.optim.base_lr = 0.2
    config.optim.weight_decay = 5e-4  # SimSiam's setting for CIFAR-sized images
    config.train.num_epochs = 20
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.knn_every = 2000
    config.eval.knn_tasks = tuple(TASKS)
    config.eval.knn_max_train = 5000
    return config


def make_tiny(config: ConfigDict) -> ConfigDict:
    """A tiny model and a handful of steps: any experiment runs end to end in seconds on a CPU."""
    config.model = models.model_config("tiny", stem="small", proj_dim=32, pred_dim=16,
                                       kd_head=config.model.kd_head,
                                       sdr=config.model.sdr.to_dict())
    config.data.image_size = 32
    config.data.aug = default_aug_config(32)
    config.optim.batch_size = 16
    config.train.num_steps = 6
    config.train.log_every = 2
    config.train.checkpoint_every = 3
    config.train.knn_every = 0
    config.eval.knn_max_train = 64
    config.eval.batch_size = 64
    # Tiny runs exercise the code path, not the data: the small embedded pool always works.
    config.data.dataset = "mosaic/small"
    config.data.split = "pool"
    config.data.num_workers = 0
    if "sdr" in config:  # one sub-net per device, a few images each
        config.sdr.paths_per_step = 0
        config.sdr.subnet_batch_size = 8
    return config


def load_config_file(spec: str) -> ConfigDict:
    """`get_config(arg)` of a config file named like the --config flag: 'configs/x.py[:arg]'.

    A relative path is looked up in the working directory, then in the repository root, so a
    config can name another one (e.g. the SDR config a clustering job must agree with).
    """
    path, _, arg = spec.partition(":")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(repo_root, path)]
    found = next((c for c in candidates if os.path.isfile(c)), None)
    if found is None:
        raise ConfigError(f"config file {path!r} not found (looked in {', '.join(candidates)}).")
    module_spec = importlib.util.spec_from_file_location(
        "_config_" + os.path.splitext(os.path.basename(found))[0], found)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {found} has no get_config().")
    return module.get_config(arg or None)
