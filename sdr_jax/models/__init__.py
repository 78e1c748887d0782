"""Models: config factory and builder for the (SDR) SimSiam network."""
from __future__ import annotations

from typing import Any, Optional

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from sdr_jax.core import paths
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
    """Locked model ConfigDict; `overrides` may be nested dicts (e.g. sdr=dict(num_groups=2)).

    Fields: arch, width, stem ('imagenet'|'small'), dtype, proj_dim, proj_layers,
    pred_dim, bn_momentum, sdr: {num_groups (0 = plain SimSiam), shared_fraction,
    stages, num_paths (optional: error if more than G**L)}.
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {sorted(ARCHS)}.")
    cfg = ml_collections.ConfigDict({
        "arch": arch,
        "width": ARCHS[arch].keywords.get("width", 1.0),
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
    if model_cfg.arch not in ARCHS:
        raise ValueError(f"Unknown arch {model_cfg.arch!r}; choose one of {sorted(ARCHS)}.")
    if model_cfg.stem not in ("imagenet", "small"):
        raise ValueError(f"model.stem must be 'imagenet' or 'small', got {model_cfg.stem!r}.")
    if model_cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype must be one of {DTYPES}, got {model_cfg.dtype!r}.")
    if model_cfg.proj_layers < 1:
        raise ValueError(f"model.proj_layers must be >= 1, got {model_cfg.proj_layers}.")
    stage_sizes = ARCHS[model_cfg.arch].keywords["stage_sizes"]
    block_cls = ARCHS[model_cfg.arch].keywords["block_cls"]
    layout = sdr_layout(model_cfg)
    spec = path_spec(model_cfg)
    wanted = model_cfg.sdr.num_paths
    if wanted is not None and not 1 <= wanted <= spec.num_paths:
        raise ValueError(
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
