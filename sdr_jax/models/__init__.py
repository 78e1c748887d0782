"""Models: config factory and builder for the (SDR) SimSiam network."""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import ml_collections

from sdr_jax import config_base
from sdr_jax.core import paths
from sdr_jax.core.errors import ConfigError
from sdr_jax.models import resnet
from sdr_jax.models.simsiam import SimSiam

# arch -> the ResNet partial fixing its stage sizes, block and default width.
ARCHS = {
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "tiny": resnet.ResNetTiny,  # tests and CPU smoke runs
    "tiny_bottleneck": resnet.ResNetTinyBottleneck,
}
DTYPES = ("float32", "bfloat16")


def model_config(arch: str = "resnet18", **overrides: Any) -> ml_collections.ConfigDict:
    """`sdr_jax.config_base.model_config` (the fields) with the arch's own default width."""
    if arch not in ARCHS:
        raise ConfigError(f"Unknown arch {arch!r}; choose one of {sorted(ARCHS)}.")
    overrides.setdefault("width", ARCHS[arch].keywords.get("width", 1.0))
    return config_base.model_config(arch, **overrides)


def path_spec(model_cfg: Any) -> paths.PathSpec:
    """The path space of a model config."""
    return paths.PathSpec.from_config(model_cfg)


def sdr_layout(model_cfg: Any) -> Optional[paths.SDRLayout]:
    """The SDR layout of a model config; None for a plain network (num_groups=0)."""
    sdr = model_cfg.sdr
    if sdr.num_groups == 0:
        return None
    return paths.SDRLayout(tuple(sdr.stages), int(sdr.num_groups), float(sdr.shared_fraction))


def build_model(model_cfg: Any, *, bn_axis_name: Optional[str] = None, sync_bn: bool = True) -> SimSiam:
    """SimSiam (masked SDRnet) for `model_cfg`; ValueError on any inconsistency.

    `bn_axis_name`: the collective axis inside `jax.shard_map` for BN; with
    `sync_bn` the batch statistics are pooled over it (SyncBN).
    """
    if model_cfg.arch not in ARCHS:
        raise ConfigError(f"Unknown arch {model_cfg.arch!r}; choose one of {sorted(ARCHS)}.")
    if model_cfg.stem not in ("imagenet", "small"):
        raise ConfigError(f"model.stem must be 'imagenet' or 'small', got {model_cfg.stem!r}.")
    if model_cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {DTYPES}, got {model_cfg.dtype!r}.")
    if model_cfg.proj_layers < 1:
        raise ConfigError(f"model.proj_layers must be >= 1, got {model_cfg.proj_layers}.")
    stage_sizes = ARCHS[model_cfg.arch].keywords["stage_sizes"]
    block_cls = ARCHS[model_cfg.arch].keywords["block_cls"]
    layout = sdr_layout(model_cfg)
    spec = path_spec(model_cfg)
    wanted = model_cfg.sdr.num_paths
    if wanted is not None and not 1 <= wanted <= spec.num_paths:
        raise ConfigError(
            f"model.sdr.num_paths={wanted} but {spec.num_groups} groups x {spec.num_blocks} SDR "
            f"blocks give {spec.num_paths} paths; raise num_groups/stages or lower num_paths.")
    filters = resnet.stage_filters(stage_sizes, model_cfg.width)
    resnet.stage_layouts(filters, block_cls.expansion, layout)  # raises if groups do not divide
    return SimSiam(
        stage_sizes=stage_sizes, block_cls=block_cls, width=model_cfg.width,
        stem_kind=model_cfg.stem, sdr=layout, proj_dim=model_cfg.proj_dim,
        proj_layers=model_cfg.proj_layers, pred_dim=model_cfg.pred_dim,
        dtype=jnp.dtype(model_cfg.dtype), bn_momentum=model_cfg.bn_momentum,
        bn_axis_name=bn_axis_name, sync_bn=sync_bn, kd_head=model_cfg.kd_head)


__all__ = ["ARCHS", "SimSiam", "build_model", "model_config", "path_spec", "sdr_layout"]
