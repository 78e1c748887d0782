"""SimSiam model: (masked SDR) ResNet backbone + projector + predictor."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core import paths
from sdr_jax.models.heads import Predictor, Projector
from sdr_jax.models.resnet import ResNet

# ImageNet mean/std on the 0..255 scale: pipelines ship uint8 images.
_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


class SimSiam(nn.Module):
    """Backbone feature, projection z and prediction p for one path.

    The fields are flat (not sub-modules) so a model can be cloned with other
    widths (export) or BN momentum (recalibration). Heads work on any path:
    masked channels of the feature are zeros.
    """

    stage_sizes: Sequence[int]
    block_cls: Any
    width: float = 1.0
    stage_widths: Optional[tuple[int, ...]] = None
    stem_kind: str = "imagenet"
    sdr: Optional[paths.SDRLayout] = None
    proj_dim: int = 2048
    proj_layers: int = 3
    pred_dim: int = 512
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_axis_name: Optional[str] = None
    sync_bn: bool = True
    identity_select: Optional[tuple[int, ...]] = None  # compact exports, see ResNet
    kd_head: bool = False  # SDR: a second predictor for SiamKD distillation (output 'kd')

    def setup(self):
        bn = dict(dtype=self.dtype, bn_momentum=self.bn_momentum, bn_axis_name=self.bn_axis_name,
                  sync_bn=self.sync_bn)
        self.backbone = ResNet(self.stage_sizes, self.block_cls, self.width, self.stage_widths,
                               self.stem_kind, self.sdr, **bn, identity_select=self.identity_select)
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
