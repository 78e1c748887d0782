"""Compact execution of sub-nets with the path still data (issue 15).

The masked SDRnet runs every path at full width; a sub-net uses only its shared channels and one
group per SDR block, and every group of a block has the same width, so its channels are a
gather of static size from the full weights. `CompactSubnets(model, stage)` is a drop-in for
`model` in `apply(variables, images, path, train, mutable=...)`: inside the (jitted) function it
gathers the path's sub-net through the backbone's own `export` (a `paths.StagePath`: the blocks
that are ALL in stage `stage` static, the groups traced) and runs it at its own width. So:

  * one compile per progressive stage (the ALL blocks fix the shapes), none per path;
  * gradients land in the full weights (autodiff's transpose of the gather), zero outside the
    path's channels, as with masks;
  * outputs equal the masked SDRnet's on the active channels (train mode: BN over a channel's
    batch statistics never mixes channels; masked channels are zeros in the SDRnet and absent
    here); the returned running statistics are the full tree with the path's channels updated
    and the others untouched, as `MaskedBatchNorm` does.

A backbone gets this by writing `export` with the base class's helpers (`active_channels`,
`slice_conv_bn`/`take`, `plain`), which accept traced channel indices.

Where masks stay (cheaper or needed): the SDRnet itself (all groups: nothing to drop), the
SiamKD teacher pass (the SDRnet on the sub-net images), BN recalibration (`export.recalibrate_bn`:
one probe per path, eval-sized batches, compiled once for all paths) and routing's prefix tree
(`jobs/route.py`: its levels batch many paths at once). Sub-nets that pool BN statistics across
devices running other paths (SyncBN) need masks too: a compact channel has no fixed identity
across devices; `CompactSubnets` refuses such a model.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from sdr_jax.core import paths
from sdr_jax.models.export import subnet_of
from sdr_jax.models.simsiam import SimSiam

EXECUTIONS = ("compact", "masked")


class CompactSubnets:
    """`model` (an SDRnet) applied at the width of the sub-net of a traced path of stage `stage`."""

    def __init__(self, model: SimSiam, stage: int):
        if model.sdr is None:
            raise ValueError("CompactSubnets needs an SDRnet (a model with SDR stages).")
        if not 1 <= stage <= len(model.sdr.stages):
            raise ValueError(f"A sub-net's progressive stage is in 1..{len(model.sdr.stages)}, "
                             f"got {stage}.")
        if model.bn_axis_name is not None and model.sync_bn:
            raise ValueError("Compact sub-nets normalise with their own batch statistics; build "
                             "the model with sync_bn=False (SyncBN across paths needs masks).")
        self.model = model.clone(bn_axis_name=None)  # statistics are this device's path's own
        self.stage = stage

    def subnet(self, variables: dict, path: jax.Array) -> tuple[SimSiam, dict]:
        """The compact sub-net of `path` (traced, (L,)) and its variables gathered from
        `variables` (the SDRnet's)."""
        return subnet_of(self.model, variables, paths.StagePath(path, self.stage))

    def apply(self, variables: dict, images: jax.Array, path: jax.Array, train: bool,
              mutable: Sequence[str] | bool = False) -> Any:
        model, compact = self.subnet(variables, path)
        if not mutable:
            return model.apply(compact, images, None, train)
        if list(mutable) != ["batch_stats"]:
            raise ValueError(f"CompactSubnets.apply mutates only 'batch_stats', got {mutable}.")
        out, new = model.apply(compact, images, None, train, mutable=["batch_stats"])
        return out, {"batch_stats": self._scatter_stats(variables, path, new)}

    def _scatter_stats(self, variables: dict, path: jax.Array, new: dict) -> Any:
        """The full running statistics with the sub-net's channels replaced by its new ones
        (the other channels unchanged, as in `MaskedBatchNorm`): the same gather, applied to
        every channel's own index, says where each compact channel came from."""
        full = variables["batch_stats"]
        index = jax.tree.map(lambda a: jnp.arange(a.shape[0]), full)
        origin = self.subnet({"params": variables["params"], "batch_stats": index},
                             path)[1]["batch_stats"]
        return jax.tree.map(lambda a, i, b: a.at[i].set(b, unique_indices=True), full, origin,
                            new["batch_stats"])
