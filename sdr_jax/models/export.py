"""Sub-net export (compact narrower ResNet) and BN recalibration of one path."""
from __future__ import annotations

from typing import Any, Iterable

import jax
import numpy as np

from sdr_jax.core import paths
from sdr_jax.models import build_model, path_spec, resnet, sdr_layout
from sdr_jax.models.simsiam import SimSiam

Variables = dict[str, Any]


def recalibrate_bn(model: SimSiam, variables: Variables, path: Any, batches: Iterable[Any]) -> Variables:
    """Fresh BN running statistics of `path`: the exact average over `batches`.

    As in slimmable / once-for-all networks, the running statistics the
    SDRnet accumulated are a blend over paths; a deployed sub-net gets its own.
    Every BN sees each batch in train mode (normalised with that batch's own
    statistics); the result pools the per-batch mean and variance weighted by
    batch size. Channels the path does not use keep their statistics exactly.
    """
    probe = model.clone(bn_momentum=0.0, bn_axis_name=None)  # momentum 0: stats = the batch's

    @jax.jit
    def batch_stats(variables, images, path):
        _, state = probe.apply(variables, images, path, True, mutable=["batch_stats"])
        return state["batch_stats"]

    per_batch, sizes = [], []
    for images in batches:
        per_batch.append(batch_stats(variables, images, path))
        sizes.append(images.shape[0])
    if not per_batch:
        raise ValueError("recalibrate_bn needs at least one batch of images.")
    return {**variables, "batch_stats": pool_batch_stats(variables["batch_stats"], per_batch, sizes)}


def pool_batch_stats(old: Any, per_batch: list[Any], sizes: list[int]) -> Any:
    """The exact running statistics over batches of `sizes`, from their per-batch statistics.

    Every leaf may carry leading axes (routing pools the statistics of many tree nodes at
    once). Written as offsets from the `old` statistics so channels a path does not use
    (whose per-batch values equal the old ones) come back bit-exact.
    """
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    old = jax.tree.map(lambda a: np.asarray(a, np.float64), old)
    per_batch = [jax.tree.map(lambda a: np.asarray(a, np.float64), b) for b in per_batch]

    def pool(old_bn: dict, *bns: dict) -> dict:
        mean = old_bn["mean"] + sum(w * (b["mean"] - old_bn["mean"]) for w, b in zip(weights, bns))
        var = old_bn["var"] + sum(w * (b["var"] - old_bn["var"] + (b["mean"] - mean) ** 2)
                                  for w, b in zip(weights, bns))
        return {"mean": np.float32(mean), "var": np.float32(var)}

    is_bn = lambda node: isinstance(node, dict) and set(node) == {"mean", "var"}  # noqa: E731
    return jax.tree.map(pool, old, *per_batch, is_leaf=is_bn)


def export_subnet(model_cfg: Any, variables: Variables, path: Any) -> tuple[SimSiam, Variables]:
    """A plain narrower SimSiam holding only the channels of `path`, with its own variables.

    In eval mode its outputs equal the masked SDRnet's on `path`: the feature on
    the active channels of the last block (the SDRnet has zeros elsewhere), z and p.
    """
    model = build_model(model_cfg)
    layout = sdr_layout(model_cfg)
    path = path_spec(model_cfg).validate(path)
    if path.ndim != 1:
        raise ValueError(f"export_subnet takes one path, got shape {path.shape}.")
    stage_sizes, block_cls = model.stage_sizes, model.block_cls
    filters = resnet.stage_filters(stage_sizes, model.width)
    layouts = resnet.stage_layouts(filters, block_cls.expansion, layout)

    stage_idx = []  # (inner, outer) active channel indices per stage
    for s, (f, (inner, outer)) in enumerate(zip(filters, layouts)):
        if inner is None:
            stage_idx.append((np.arange(f), np.arange(f * block_cls.expansion)))
        else:
            p = int(path[layout.block_of(s)])
            stage_idx.append((paths.active_channels(inner, p), paths.active_channels(outer, p)))

    stem_width = int(64 * model.width)
    first_out = stage_idx[0][1]
    # In the SDRnet an identity shortcut of stage 0 adds the full stem output and
    # the block mask drops the unused channels: the compact net selects them.
    identity = filters[0] * block_cls.expansion == stem_width and first_out.size < stem_width
    compact = model.clone(
        stage_widths=tuple(inner.size for inner, _ in stage_idx), sdr=None,
        identity_select=tuple(int(i) for i in first_out) if identity else None)

    params = _plain(variables["params"])
    stats = _plain(variables["batch_stats"])
    prev = np.arange(stem_width)
    for s, (inner, outer) in enumerate(stage_idx):
        for b in range(stage_sizes[s]):
            name = ("backbone", f"stages_{s}", f"block_{b}")
            convs = {"conv1": (prev, inner), "conv2": (inner, outer), "proj_conv": (prev, outer)}
            if block_cls is resnet.Bottleneck:
                convs.update(conv2=(inner, inner), conv3=(inner, outer))
            for conv, (cin, cout) in convs.items():
                bn = conv.replace("conv", "bn")
                if conv not in _get(params, name):
                    continue
                node = _get(params, name)
                node[conv]["kernel"] = node[conv]["kernel"][..., cin, :][..., cout]
                for tree in (params, stats):
                    bn_node = _get(tree, name)[bn]
                    for key in bn_node:
                        bn_node[key] = bn_node[key][cout]
            prev = outer
    dense0 = params["projector"]["dense_0"]
    dense0["kernel"] = dense0["kernel"][prev]
    return compact, {"params": params, "batch_stats": stats}


def _plain(tree: Any) -> Any:
    """A mutable nested-dict NumPy copy of a variables tree."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _plain(v) for k, v in tree.items()}
    return np.asarray(tree)


def _get(tree: dict, keys: tuple[str, ...]) -> dict:
    for key in keys:
        tree = tree[key]
    return tree
