"""Models: config factory and builder for the (SDR) SimSiam network."""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import ml_collections

from sdr_jax import config_base
from sdr_jax.core import paths
from sdr_jax.core.errors import ConfigError
from sdr_jax.models import backbones
from sdr_jax.models.backbones import ARCHS
from sdr_jax.models.simsiam import SimSiam

DTYPES = ("float32", "bfloat16")


def model_config(arch: str = "resnet18", **overrides: Any) -> ml_collections.ConfigDict:
    """`sdr_jax.config_base.model_config` (the fields) with the arch's own default width.

    Raises `backbones.UnknownArchError` (a ConfigError) for an arch no backbone registers.
    """
    overrides.setdefault("width", backbones.default_width(arch))
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
    if model_cfg.stem not in backbones.STEMS:
        raise ConfigError(f"model.stem must be one of {backbones.STEMS}, got {model_cfg.stem!r}.")
    if model_cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype must be one of {DTYPES}, got {model_cfg.dtype!r}.")
    if model_cfg.proj_layers < 1:
        raise ConfigError(f"model.proj_layers must be >= 1, got {model_cfg.proj_layers}.")
    spec = path_spec(model_cfg)
    wanted = model_cfg.sdr.num_paths
    if wanted is not None and not 1 <= wanted <= spec.num_paths:
        raise ConfigError(
            f"model.sdr.num_paths={wanted} but {spec.num_groups} groups x {spec.num_blocks} SDR "
            f"blocks give {spec.num_paths} paths; raise num_groups/stages or lower num_paths.")
    bn = dict(dtype=jnp.dtype(model_cfg.dtype), bn_momentum=model_cfg.bn_momentum,
              bn_axis_name=bn_axis_name, sync_bn=sync_bn)
    backbone = backbones.build(model_cfg.arch, width=model_cfg.width, stem_kind=model_cfg.stem,
                               sdr=sdr_layout(model_cfg), **bn)
    backbone.channel_layouts()  # raises if the groups do not divide
    return SimSiam(backbone=backbone, proj_dim=model_cfg.proj_dim,
                   proj_layers=model_cfg.proj_layers, pred_dim=model_cfg.pred_dim,
                   kd_head=model_cfg.kd_head, **bn)


__all__ = ["ARCHS", "SimSiam", "build_model", "model_config", "path_spec", "sdr_layout"]
