"""SimSiam model: (masked SDR) backbone + projector + predictor."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core import paths
from sdr_jax.models.backbones.base import SHARED_FIELDS, Backbone
from sdr_jax.models.heads import Predictor, Projector

# ImageNet mean/std on the 0..255 scale: pipelines ship uint8 images.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class SimSiam(nn.Module):
    """Backbone feature, projection z and prediction p for one path.

    `backbone` is any `Backbone` (models/backbones/); it becomes the 'backbone' child. The
    network's dtype and BN settings are the backbone's too: they are copied into it on
    construction, so `clone(bn_momentum=0.0)` changes both. Heads work on any path: masked
    channels of the feature are zeros.
    """

    backbone: Backbone
    proj_dim: int = 2048
    proj_layers: int = 3
    pred_dim: int = 512
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: Optional[str] = None
    sync_bn: bool = True
    kd_head: bool = False  # SDR: a second predictor for SiamKD distillation (output 'kd')

    def __post_init__(self):
        shared = {name: getattr(self, name) for name in SHARED_FIELDS}
        if any(getattr(self.backbone, name) != value for name, value in shared.items()):
            object.__setattr__(self, "backbone", self.backbone.clone(**shared))
        super().__post_init__()

    @property
    def sdr(self) -> Optional[paths.SDRLayout]:
        """The backbone's SDR layout (None: a plain or compact network)."""
        return self.backbone.sdr

    def setup(self):
        bn = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
                  sync_bn=self.sync_bn)
        self.projector = Projector(self.proj_dim, self.proj_layers, **bn)
        self.predictor = Predictor(self.pred_dim, self.proj_dim, **bn)
        if self.kd_head:
            self.kd_predictor = Predictor(self.pred_dim, self.proj_dim, **bn)

    def __call__(self, images: jax.Array, path: Optional[jax.Array], train: bool) -> dict[str, jax.Array]:
        feature = self.backbone(self.normalize(images), path, train)
        z = self.projector(feature, train)
        out = {"feature": feature, "z": z, "p": self.predictor(z, train)}
        if self.kd_head:  # a sub-net's prediction of the SDRnet's z (SiamKD, DESIGN §2.5)
            out["kd"] = self.kd_predictor(z, train)
        return out

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 or float images in [0, 255], (N, H, W, 3) -> normalised compute dtype."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be (batch, height, width, 3) RGB, got shape {images.shape}.")
        return ((images.astype(jnp.float32) - _MEAN) / _STD).astype(self.dtype)

    # Stage-wise application for routing (all paths as a tree over prefixes).
    def stem(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.backbone.stem(self.normalize(images), train)

    def stage(self, x: jax.Array, stage: int, p: Optional[jax.Array], train: bool = False) -> jax.Array:
        return self.backbone.stage(x, stage, p, train)

    def pool(self, x: jax.Array) -> jax.Array:
        return self.backbone.pool(x)

    def heads(self, feature: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """z and p from a pooled feature (e.g. one computed stage-wise)."""
        z = self.projector(feature, train)
        return {"z": z, "p": self.predictor(z, train)}
