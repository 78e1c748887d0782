"""Models: config factory and builder for the (SDR) SimSiam network."""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from sdr_jax.core import paths
from sdr_jax.models import backbones
from sdr_jax.models.backbones import ARCHS
from sdr_jax.models.simsiam import SimSiam

DTYPES = ("float32", "bfloat16")


def model_config(arch: str = "resnet18", **overrides: Any) -> ml_collections.ConfigDict:
    """Locked model ConfigDict; `overrides` may be nested dicts (e.g. sdr=dict(num_groups=2)).

    Fields: arch (a backbone of `backbones.ARCHS`), width, stem ('imagenet'|'small'), dtype,
    proj_dim, proj_layers,
    pred_dim, bn_momentum, sdr: {num_groups (0 = plain SimSiam), shared_fraction,
    stages, num_paths (optional: error if more than G**L)}.
    """
    cfg = ml_collections.ConfigDict({
        "arch": arch,
        "width": backbones.default_width(arch),
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


def _merge(cfg: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
    for key, value in overrides.items():
        if key not in cfg:
            raise ValueError(f"Unknown field {where}.{key}; known: {sorted(cfg.keys())}.")
        if isinstance(cfg[key], ml_collections.ConfigDict):
            _merge(cfg[key], dict(value), f"{where}.{key}")
        else:
            cfg[key] = value


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
        raise ValueError(f"model.stem must be one of {backbones.STEMS}, got {model_cfg.stem!r}.")
    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {DTYPES}, got {model_cfg.dtype!r}.")
    if model_cfg.proj_layers < 1:
        raise ValueError(f"model.proj_layers must be >= 1, got {model_cfg.proj_layers}.")
    spec = path_spec(model_cfg)
    wanted = model_cfg.sdr.num_paths
    if wanted is not None and not 1 <= wanted <= spec.num_paths:
        raise ValueError(
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
