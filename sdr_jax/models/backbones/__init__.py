"""Backbones by name: `model.arch` picks one of `ARCHS` (see base.py for the interface).

Adding a backbone: its module here (a `Backbone` subclass and an `ARCHS` dict of arch name ->
partial), one entry in `_MODULES` below, and its test. Export, routing, BN recalibration and the
reports work through the interface.
"""
from __future__ import annotations

from typing import Any

from sdr_jax.core.errors import ConfigError
from sdr_jax.models.backbones import resnet, vgg
from sdr_jax.models.backbones.base import STEMS, Backbone

_MODULES = (resnet, vgg)

ARCHS = {name: arch for module in _MODULES for name, arch in module.ARCHS.items()}
# Class name -> class, for exported sub-nets (their file names the class).
CLASSES = {arch.func.__name__: arch.func for arch in ARCHS.values()}


class UnknownArchError(ConfigError, ValueError):
    """A `model.arch` no backbone provides."""


def arch(name: str):
    """The partial building backbone `name`; a one-line error listing the known ones."""
    if name not in ARCHS:
        raise UnknownArchError(f"Unknown arch {name!r}; choose one of {sorted(ARCHS)}.")
    return ARCHS[name]


def default_width(name: str) -> float:
    return arch(name).keywords.get("width", 1.0)


def build(name: str, **fields: Any) -> Backbone:
    """Backbone `name` with `fields` (width, stem_kind, sdr, dtype and the BN settings)."""
    return arch(name)(**fields)


def backbone_class(class_name: str) -> type[Backbone]:
    if class_name not in CLASSES:
        raise UnknownArchError(f"Unknown backbone class {class_name!r}; known: {sorted(CLASSES)}.")
    return CLASSES[class_name]


__all__ = ["ARCHS", "CLASSES", "STEMS", "Backbone", "UnknownArchError", "arch", "backbone_class",
           "build", "default_width"]
