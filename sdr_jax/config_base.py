"""The fields every config has; `configs/*.py` start from these and change what differs.

Every value a user may change lives on the config and can be overridden from the command line
(`--config.optim.batch_size=128`); a field that does not exist is an error, not a silent no-op.

Configs are inert data: this module (and so parsing any `configs/*.py`) imports only
ml_collections and `sdr_jax.core`, never JAX model code, TFDS or a job. The field definitions
live here, once; the code that uses them (`sdr_jax.models.build_model`, the augmentations, the
clustering job) reads them.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Mapping

from ml_collections import ConfigDict, config_dict

from sdr_jax.core.errors import ConfigError

# The embedded pool's tasks, one per mosaic domain (sdr_jax.data.datasets.TASKS; a test keeps
# the two equal).
MOSAIC_TASKS = ("fashion", "mnist", "animal", "emoji", "clipart", "emoji_twitter")

# Images at least this large get MoCo-v2's blur; small images get none (DESIGN.md §2.1).
BLUR_MIN_IMAGE_SIZE = 96  # (our choice) between CIFAR-size (32) and STL-size (96+)

TINY_WIDTH = 0.125  # the width of the `tiny` arch (sdr_jax.models.backbones.resnet.ResNetTiny)


def check_variant(arg: str | None, variants: tuple[str, ...] = ("tiny",)) -> str:
    """The variant of `--config=file.py:variant` ('' for none); ConfigError if unknown."""
    if arg not in (None, "", *variants):
        raise ConfigError(f"unknown config variant {arg!r}: use "
                          f"{' or '.join(repr(':' + v) for v in variants)} or nothing.")
    return arg or ""


def parse_variants(arg: str | None, flags: tuple[str, ...] = ("tiny",),
                   options: tuple[str, ...] = ("method",)) -> dict[str, str]:
    """`--config=file.py:tiny,method=byol` -> {'tiny': '', 'method': 'byol'}; ConfigError if a
    part is neither one of `flags` nor `option=value` with a known option."""
    variants = {}
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if (key in flags and not value) or (key in options and value):
            variants[key] = value
        else:
            raise ConfigError(
                f"unknown config variant {part!r}: use "
                f"{', '.join([*(repr(':' + f) for f in flags), *(repr(f':{o}=NAME') for o in options)])}"
                f", a comma-separated combination or nothing.")
    return variants


def apply_variants(config: ConfigDict, arg: str | None) -> ConfigDict:
    """`:tiny` (`make_tiny`) and `:method=NAME` (`use_method`), alone or comma-separated."""
    variants = parse_variants(arg)
    if "tiny" in variants:
        make_tiny(config)
    if "method" in variants:  # e.g. SDR over another SSL method
        use_method(config, variants["method"])
    return config


def use_method(config: ConfigDict, name: str, **fields: Any) -> ConfigDict:
    """Pre-train (or run SDR over) SSL method `name` (`sdr_jax/methods/<name>.py`); `fields` set
    some of its own fields, the others keep the method's defaults (checked when it is built)."""
    with config.unlocked():
        config.method = ConfigDict({"name": name, **fields})
    return config


def model_config(arch: str = "resnet18", **overrides: Any) -> ConfigDict:
    """Locked model ConfigDict; `overrides` may be nested dicts (e.g. sdr=dict(num_groups=2)).

    Fields: arch, width, stem ('imagenet'|'small'), dtype, proj_dim, proj_layers,
    pred_dim, bn_momentum, kd_head, sdr: {num_groups (0 = plain SimSiam), shared_fraction,
    stages, num_paths (optional: error if more than G**L)}. `sdr_jax.models.model_config` fills
    in the arch's own default width; `build_model` checks the values.
    """
    cfg = ConfigDict({
        "arch": arch,
        "width": 1.0,
        "stem": "imagenet",
        "dtype": "float32",
        "proj_dim": 2048,
        "proj_layers": 3,
        "pred_dim": 512,
        "bn_momentum": 0.9,
        "kd_head": False,
        "sdr": {
            "num_groups": 4,
            "shared_fraction": 0.5,
            "stages": (0, 1, 2, 3),
            "num_paths": config_dict.placeholder(int),
        },
    })
    _merge(cfg, overrides, "model")
    cfg.lock()
    return cfg


def _merge(cfg: ConfigDict, overrides: Mapping[str, Any], where: str) -> None:
    for key, value in overrides.items():
        if key not in cfg:
            raise ConfigError(f"Unknown field {where}.{key}; known: {sorted(cfg.keys())}.")
        if isinstance(cfg[key], ConfigDict):
            _merge(cfg[key], dict(value), f"{where}.{key}")
        else:
            cfg[key] = value


def default_aug_config(image_size: int = 32) -> ConfigDict:
    """The MoCo-v2 / SimSiam augmentation recipe for `image_size` x `image_size` outputs.

    The recipe's fields apply to both views; `view1` and `view2` hold per-view overrides of any
    of them (None = the common value), e.g. BYOL's asymmetric blur and solarize
    (configs/byol_imagenet.py): `--config.data.aug.view2.solarize_prob=0.2`. The host does
    the crop and flip, the device the colour work (sdr_jax/data/augment.py, photometric.py).
    """
    recipe = {
        "image_size": image_size,
        "crop_scale": (0.2, 1.0),
        "crop_ratio": (3 / 4, 4 / 3),
        "interpolation": "bilinear",
        "flip_prob": 0.5,
        "jitter_prob": 0.8,
        "brightness": 0.4,
        "contrast": 0.4,
        "saturation": 0.4,
        "hue": 0.1,
        "grayscale_prob": 0.2,
        "blur_prob": 0.5 if image_size >= BLUR_MIN_IMAGE_SIZE else 0.0,
        "blur_sigma": (0.1, 2.0),
        "solarize_prob": 0.0,  # BYOL's second view: 0.2
    }
    def overrides():  # fresh placeholders per view (a shared one would link the two views)
        return {name: config_dict.placeholder(type(value)) for name, value in recipe.items()
                if name != "image_size"}  # both views are batched together: one size
    return ConfigDict({**recipe, "view1": overrides(), "view2": overrides()}).lock()


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Every knob of the Sinkhorn tree clustering (sdr_jax.jobs.cluster.clustering.fit)."""

    epsilon: float = 0.05      # Sinkhorn entropic regularisation.
    sinkhorn_iters: int = 3    # SwAV uses 3; more makes each batch closer to exactly balanced.
    tau: float = 0.1           # Temperature of softmax(S / tau).
    learning_rate: float = 0.5  # Peak SGD learning rate (cosine-decayed over each level).
    momentum: float = 0.9
    epochs: int = 5            # Passes over the data per tree level.
    batch_size: int = 4096     # Global batch; split over the mesh's devices.
    seed: int = 0
    # Hard assignment after each level: 'balanced' (equal children per node, up to ties, by
    # `sinkhorn.balanced_assignment`) or 'argmax' (each example to its best-scoring child).
    assign: str = "balanced"
    assign_iters: int = 100    # Price iterations of the balanced assignment.
    # Features up to this size live on the devices (one copy each) and a level's epochs are one
    # jitted scan over its batches; larger ones stream from the host, a dispatch per batch.
    device_features_mb: int = 2048

    def __post_init__(self):
        for name in ("epsilon", "tau", "learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"cluster.{name} must be > 0; got {getattr(self, name)}.")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"cluster.momentum must lie in [0, 1); got {self.momentum}.")
        if self.assign not in ("balanced", "argmax"):
            raise ConfigError(f"cluster.assign must be 'balanced' or 'argmax'; got "
                              f"{self.assign!r}.")
        if not (isinstance(self.device_features_mb, int) and self.device_features_mb >= 0):
            raise ConfigError(f"cluster.device_features_mb must be an int >= 0; got "
                              f"{self.device_features_mb!r}.")
        for name in ("sinkhorn_iters", "epochs", "batch_size", "assign_iters"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                raise ConfigError(f"cluster.{name} must be an int >= 1; got "
                                  f"{getattr(self, name)!r}.")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | ConfigDict) -> "ClusterConfig":
        """From a dict or ConfigDict; unknown keys are an error (no silently ignored typos)."""
        values = cfg.to_dict() if isinstance(cfg, ConfigDict) else dict(cfg)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown clustering config keys {sorted(unknown)}; valid keys: "
                              f"{[f.name for f in dataclasses.fields(cls)]}.")
        return cls(**values)

    def to_config(self) -> ConfigDict:
        """As a ConfigDict, for configs and command-line overrides."""
        return ConfigDict(dataclasses.asdict(self))


def simsiam_config(*, dataset: str, image_size: int, arch: str, width: float, stem: str,
                   proj_dim: int, pred_dim: int, split: str = "pool") -> ConfigDict:
    config = ConfigDict()
    config.kind = "pretrain"               # launch/train.py runs sdr_jax/train/<kind>.py
    config.method = ConfigDict({"name": "simsiam"})  # sdr_jax/methods/<name>.py and its fields
                                           # (another: use_method(config, name, **fields))
    config.seed = 0

    config.data = ConfigDict()
    config.data.dataset = dataset          # 'mosaic', 'mosaic/small', or a prepared TFDS name
    config.data.split = split
    config.data.domains = ()               # mosaic: train only on these domains (() = all)
    config.data.data_dir = ""              # '' = TFDS's default (~/tensorflow_datasets)
    config.data.image_size = image_size
    config.data.num_workers = 0            # grain worker processes (0 = in the main process)
    config.data.aug = default_aug_config(image_size)

    config.model = model_config(arch, width=width, stem=stem, proj_dim=proj_dim,
                                       pred_dim=pred_dim, sdr=dict(num_groups=0))

    config.optim = ConfigDict()
    config.optim.optimizer = "sgd"         # 'sgd' (SimSiam) or 'lars' (BYOL's ImageNet recipe)
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
    config.eval.knn_tasks = ()             # downstream tasks (see sdr_jax.data.tasks)
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
    config.kind = "sdr"
    config.model = model_config(
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
    config.sdr.kd_weight = 1.0             # λ (0: no distillation: no teacher pass, loss_kd 0)
    config.sdr.freeze_shared = False       # True: the sub-net terms train only the entries some
                                           # path lacks (its groups; the SiamKD predictor); the
                                           # shared ones learn from the SDRnet's D0 term alone
    config.sdr.subnet_exec = "compact"     # sub-nets at their own width ('compact', one compile
                                           # per stage) or full width with masks ('masked')
    return config


def cluster_config(*, sdr_config: str, extract_batch_size: int, images_per_cluster: int
                   ) -> ConfigDict:
    """The fields of a clustering job (launch/cluster.py); G and L come from `sdr_config`."""
    config = ConfigDict()
    config.pretrain_workdir = ""           # --workdir of the SimSiam run (required)
    config.sdr_config = sdr_config         # the SDR config file the clusters are for
    config.data = ConfigDict()
    config.data.dataset = ""               # '' = the dataset/split/data_dir the run trained on
    config.data.split = ""
    config.data.data_dir = ""
    config.extract = ConfigDict()
    config.extract.batch_size = extract_batch_size
    config.cluster = ClusterConfig().to_config()
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
    config.data.image_size = MOSAIC_IMAGE_SIZE
    config.data.aug = default_aug_config(MOSAIC_IMAGE_SIZE)
    config.optim.batch_size = 64
    config.optim.base_lr = 0.2
    config.optim.weight_decay = 5e-4  # SimSiam's setting for CIFAR-sized images
    config.train.num_epochs = 20
    config.train.log_every = 50
    config.train.checkpoint_every = 500
    config.train.knn_every = 2000
    config.eval.knn_tasks = MOSAIC_TASKS
    config.eval.knn_max_train = 5000
    return config


def use_imagenet_scale(config: ConfigDict) -> ConfigDict:
    """What every ImageNet pre-training config shares, whatever the method: bfloat16
    activations, 16 input workers, 100 epochs, a kNN probe every 5000 steps."""
    config.model.dtype = "bfloat16"
    config.data.num_workers = 16
    config.train.num_epochs = 100
    config.train.knn_every = 5000
    return config


def make_tiny(config: ConfigDict) -> ConfigDict:
    """A tiny model and a handful of steps: any experiment runs end to end in seconds on a CPU."""
    config.model = model_config("tiny", width=TINY_WIDTH, stem="small", proj_dim=32, pred_dim=16,
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
