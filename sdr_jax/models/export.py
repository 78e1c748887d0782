"""A path's deployed sub-net: BN recalibration, compact export, its files, its cost.

Everything here works through the backbone interface (models/backbones/base.py): a backbone
exports its own compact sub-net; the heads' input rows follow the feature channels it keeps.

An exported sub-net is a directory with `model.json` (the network's fields, the backbone's under
"backbone", and the caller's "meta") and `variables.npz`:

    model, variables = sdr_jax.models.export.load_exported(".../route/<task>/best_subnet")
    feature = model.apply(variables, images_uint8_nhwc, None, False)["feature"]
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core import io
from sdr_jax.core.errors import CheckpointError
from sdr_jax.models import backbones, build_model, path_spec
from sdr_jax.models.backbones.base import SHARED_FIELDS, plain, take
from sdr_jax.models.simsiam import SimSiam

Variables = dict[str, Any]
EXPORT_DIR = "best_subnet"
MODEL_FILE, VARIABLES_FILE = "model.json", "variables.npz"
# Files written before backbones were plug-ins hold these ResNet fields beside the heads'.
_LEGACY_RESNET_FIELDS = ("stage_sizes", "block_cls", "width", "stage_widths", "stem_kind",
                         "identity_select")


def recalibrate_bn(model: SimSiam, variables: Variables, path: Any, batches: Iterable[Any]) -> Variables:
    """Fresh BN running statistics of `path`: the exact average over `batches`.

    As in slimmable / once-for-all networks, the running statistics the
    SDRnet accumulated are a blend over paths; a deployed sub-net gets its own.
    Every BN sees each batch in train mode (normalised with that batch's own
    statistics); the result pools the per-batch mean and variance weighted by
    batch size. Channels the path does not use keep their statistics exactly.
    """
    probe = stats_probe(model)

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


def stats_probe(model: SimSiam) -> SimSiam:
    """`model` with BN momentum 0 and no collective axis: a train-mode apply writes each BN's
    statistics of that batch alone (recalibration, here and in routing's prefix tree)."""
    return model.clone(bn_momentum=0.0, bn_axis_name=None)


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
    the active channels of the last stage (the SDRnet has zeros elsewhere), z and p.
    """
    model = build_model(model_cfg)
    path = path_spec(model_cfg).validate(path)
    if path.ndim != 1:
        raise ValueError(f"export_subnet takes one path, got shape {path.shape}.")
    return subnet_of(model, variables, path)


def subnet_of(model: SimSiam, variables: Variables, path: Any) -> tuple[SimSiam, Variables]:
    """`model`'s compact sub-net on `path` and its variables (`export_subnet` without the config).

    `path` is a validated concrete path (NumPy variables out), or a `paths.StagePath` inside a
    jitted function: then the variables are gathered from the traced ones (autodiff's transpose
    of the gather puts a sub-net's gradients in the full weights; models/compact.py)."""
    params, stats = plain(variables["params"]), plain(variables["batch_stats"])
    compact, backbone_vars, kept = model.backbone.export(
        {"params": params["backbone"], "batch_stats": stats["backbone"]}, path)
    params["backbone"], stats["backbone"] = backbone_vars["params"], backbone_vars["batch_stats"]
    dense0 = params["projector"]["dense_0"]
    dense0["kernel"] = take(dense0["kernel"], kept, 0)
    return model.clone(backbone=compact), {"params": params, "batch_stats": stats}


def shared_entries(model: SimSiam, variables: Variables) -> Any:
    """Per parameter, True on the entries every sub-net of the SDRnet `model` uses.

    Those are the shared channels' weights and every unsplit part (stem, plain stages, the
    heads' rows past the projector's input). Read off the gathers themselves: the transpose of
    one sub-net's gather (`subnet_of`) applied to ones is nonzero exactly on the entries it uses;
    groups are disjoint, so the sub-nets of two groups (every block on group 0, every block on
    group 1) share exactly what all share. Works on traced params too (inside a step)."""
    if model.sdr is None or model.sdr.num_groups < 2:
        raise ValueError("shared_entries needs an SDRnet with at least two groups per block.")

    def used(group: int) -> Any:
        path = np.full(len(model.sdr.stages), group, np.int32)
        gather = lambda params: subnet_of(model, {**variables, "params": params},  # noqa: E731
                                          path)[1]["params"]
        out, pull = jax.vjp(gather, variables["params"])
        return pull(jax.tree.map(jnp.ones_like, out))[0]

    return jax.tree.map(lambda a, b: (a != 0) & (b != 0), used(0), used(1))


# -- files of exported sub-nets ------------------------------------------------------------------

def save_exported(directory: str, model: SimSiam, variables: Variables, meta: dict) -> None:
    """Writes a compact (plain, sdr=None) network as model.json + variables.npz."""
    if model.sdr is not None:
        raise ValueError("save_exported takes a compact sub-net (export_subnet), not the SDRnet.")
    backbone = {"class": type(model.backbone).__name__, **model.backbone.to_fields()}
    for name in SHARED_FIELDS:
        backbone.pop(name)  # the network's, below
    fields = {"backbone": backbone, "proj_dim": model.proj_dim, "proj_layers": model.proj_layers,
              "pred_dim": model.pred_dim, "dtype": jnp.dtype(model.dtype).name,
              "bn_momentum": model.bn_momentum}
    flat = {"/".join(str(getattr(k, "key", k)) for k in keypath): np.asarray(leaf)
            for keypath, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]}
    io.write_npz(os.path.join(directory, VARIABLES_FILE), flat)
    io.write_json(os.path.join(directory, MODEL_FILE), {"model": fields, "meta": meta},
                  indent=2, sort_keys=True)


def load_exported(directory: str) -> tuple[SimSiam, Variables]:
    """(model, variables) of a sub-net written by `save_exported` (e.g. route's best_subnet/)."""
    fields = dict(_read_model_file(directory)["model"])
    backbone = fields.pop("backbone", None)
    if backbone is None:  # an older file: ResNet fields beside the heads'
        backbone = {"class": "ResNet", **{k: fields.pop(k) for k in _LEGACY_RESNET_FIELDS}}
    backbone = dict(backbone)
    fields["dtype"] = jnp.dtype(fields["dtype"])
    cls = backbones.backbone_class(backbone.pop("class"))
    variables: dict = {}
    for key, value in io.read_npz(os.path.join(directory, VARIABLES_FILE)).items():
        node = variables
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return SimSiam(backbone=cls.from_fields(backbone), **fields), variables


def exported_meta(directory: str) -> dict:
    """The `meta` saved with an exported sub-net."""
    return _read_model_file(directory)["meta"]


def _read_model_file(directory: str) -> dict:
    model_path = os.path.join(directory, MODEL_FILE)
    if not io.exists(model_path):
        raise CheckpointError(f"{directory} is not an exported sub-net (no {MODEL_FILE}); run "
                              "launch/route.py first.")
    return io.read_json(model_path)


# -- cost ----------------------------------------------------------------------------------------

def param_count(tree: Any) -> int:
    """Number of scalars in a (params) tree."""
    return int(sum(np.size(a) for a in jax.tree.leaves(tree)))


def forward_flops(model: SimSiam, variables: Variables, image_size: int, path: Optional[Any], *,
                  heads: bool = False) -> float:
    """FLOPs per image of the eval forward on `path` (XLA's cost analysis of the lowered
    function, batch 1): the backbone feature, or with `heads` the whole network."""
    path = None if path is None else jnp.asarray(path)

    def forward(variables, images):
        out = model.apply(variables, images, path, False)
        return out if heads else out["feature"]

    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.uint8)
    cost = jax.jit(forward).lower(variables, image).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def backbone_cost(model: SimSiam, variables: Variables, image_size: int,
                  path: Optional[Any]) -> tuple[int, float]:
    """(backbone parameters, backbone forward FLOPs per image) of `model` on `path`."""
    return (param_count(variables["params"]["backbone"]),
            forward_flops(model, variables, image_size, path))
