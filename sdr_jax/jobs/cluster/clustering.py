"""Hierarchical, path-shaped Sinkhorn clustering (DESIGN.md §2.2).

The tree has L levels. Level l holds centroids of shape (G**l, G, D): row `node` splits the
examples of depth-l tree node `node` G ways. For an example f of node `parent` the scores are
S = f · C[parent] (G of them); the balanced posterior U = sinkhorn(S) (balanced within each
parent) is the target of a cross-entropy against softmax(S / tau), minimised by SGD over
mini-batches. After training a level, the hard assignment argmax S gives each example its
child, node id parent * G + child, which is the parent of the next level. Levels train one
after another; after level L-1 the node id is the leaf id == the SDR path index.

Every step is the training step skeleton (`train/step.py`): one jitted `shard_map` over a 1-D
data mesh (the batch is split over its devices, the Sinkhorn column sums and the gradient are
reduced across them), so the same code clusters on one CPU or on a pod.
"""
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sdr_jax.config_base import ClusterConfig
from sdr_jax.core.errors import ConfigError, SDRError
from sdr_jax.core.numerics import l2_normalize
from sdr_jax.data.assignments import Assignments
from sdr_jax.jobs.cluster.store import FeatureStore
from sdr_jax.jobs.cluster.sinkhorn import balanced_assignment, sinkhorn
from sdr_jax.train import step as step_lib
from sdr_jax.train.state import TrainState


# Examples per tree node that the k-means++ seeding looks at (bounds its reads).
_SEED_CANDIDATES = 2048
_METRICS = step_lib.metrics_collection()


class EmptyClusterError(SDRError, ValueError):
    """A tree node ended up with too few examples for its sub-tree."""


Features = np.ndarray | FeatureStore


def fit(features: Features, ids: np.ndarray | None, num_groups: int, num_blocks: int,
        cfg: ClusterConfig | Mapping[str, Any] | ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh | None = None, *,
        provenance: Mapping[str, Any] | None = None,
        seconds: dict[str, float] | None = None) -> Assignments:
    """Clusters `features` into the G-ary tree of depth L whose leaves are the SDR paths.

    Args:
      features: (n, D) array, or a FeatureStore (streamed, never loaded whole).
      ids: (n,) unique example ids; None takes the store's ids (or 0..n-1 for an array).
      num_groups, num_blocks: G and L; there are G**L leaf clusters.
      cfg: ClusterConfig, or a dict/ConfigDict with its fields.
      mesh: a 1-D device mesh to split batches over; None uses all local devices.
      provenance: recorded in the result (checkpoint, dataset, split, ...).
      seconds: if given, filled with the wall seconds of each phase (load, init, train, scores,
        assign), summed over the levels (`bench/clustering.py` prints them).

    Raises:
      EmptyClusterError: a tree node gets fewer examples than it has leaves to fill.
    """
    cfg = cfg if isinstance(cfg, ClusterConfig) else ClusterConfig.from_mapping(cfg)
    num_examples, dim = _check_features(features)
    ids = _resolve_ids(features, ids, num_examples)
    if num_groups < 2 or num_blocks < 1:
        raise ConfigError(f"need num_groups >= 2 and num_blocks >= 1; got G={num_groups}, "
                          f"L={num_blocks}.")
    mesh = mesh if mesh is not None else jax.make_mesh((jax.local_device_count(),), ("data",))
    if cfg.batch_size % mesh.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {mesh.size} "
                          "devices of the mesh.")
    if cfg.batch_size > num_examples:
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {num_examples} examples; "
                          "lower ClusterConfig.batch_size.")
    read = features.read if isinstance(features, FeatureStore) else (
        lambda rows: np.asarray(features[rows], np.float32))

    # Wall seconds per phase, summed over the levels, into `seconds` when given.
    seconds = seconds if seconds is not None else {}
    seconds.update(dict.fromkeys(("load", "init", "train", "scores", "assign"), 0.0))
    clock = time.perf_counter()

    def lap(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[phase] += now - clock
        clock = now

    # Features that fit live on the devices (one copy each): a level trains in one dispatch.
    resident = num_examples * dim * 4 <= cfg.device_features_mb * 2**20
    source = (jax.block_until_ready(jax.device_put(
        _read_all(features, cfg.device_features_mb * 2**20), NamedSharding(mesh, P())))
              if resident else read)
    nodes = np.zeros(num_examples, np.int64)  # Depth-0: everybody is under the root.
    _check_nonempty(nodes, num_groups, 0, num_blocks)
    centroids = []
    lap("load")
    for level in range(num_blocks):
        rng = np.random.default_rng([cfg.seed, level])
        params = _init_centroids(read, nodes, num_groups, level, rng)
        lap("init")
        params = jax.block_until_ready(_train_level(params, source, nodes, cfg, mesh, rng, level))
        lap("train")
        scores = _child_scores(params, source, nodes, cfg, mesh)
        lap("scores")
        children = _assign(scores, nodes, num_groups**level, cfg)
        lap("assign")
        nodes = nodes * num_groups + children
        _check_nonempty(nodes, num_groups, level + 1, num_blocks)
        centroids.append(np.asarray(params))
    record = dict(provenance or {})
    record["cluster_config"] = dataclasses.asdict(cfg)
    return Assignments(ids=ids, leaves=nodes, num_groups=num_groups, num_blocks=num_blocks,
                       centroids=tuple(centroids), provenance=record)


def _init_centroids(read: Callable[[np.ndarray], np.ndarray], nodes: np.ndarray,
                    num_groups: int, level: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (cosine distance) of every node's G centroids from its examples.

    Random seeds often land in the same coarse group, and the balanced objective then
    settles on a finer split; spreading the seeds makes the coarse split the likely one.
    """
    num_nodes = num_groups**level
    order = np.argsort(nodes, kind="stable")
    bounds = np.searchsorted(nodes[order], np.arange(num_nodes + 1))
    params = []
    for node in range(num_nodes):
        members = order[bounds[node]:bounds[node + 1]]
        candidates = np.sort(rng.choice(members, min(len(members), _SEED_CANDIDATES),
                                        replace=False))
        unit = np.asarray(l2_normalize(read(candidates)))
        chosen = [unit[rng.integers(len(unit))]]
        for _ in range(num_groups - 1):
            distance = np.clip(1.0 - np.max(unit @ np.stack(chosen).T, axis=1), 0.0, None)
            weights = distance**2 if distance.sum() > 0 else np.ones(len(unit))
            chosen.append(unit[rng.choice(len(unit), p=weights / weights.sum())])
        params.append(np.stack(chosen))
    return np.stack(params)


def _train_level(params: np.ndarray, source, nodes: np.ndarray, cfg: ClusterConfig,
                 mesh: jax.sharding.Mesh, rng: np.random.Generator, level: int) -> jax.Array:
    """SGD on the level's centroids, `cfg.epochs` passes over the data in random batches.

    `source` is the device-resident feature matrix (the whole level is then one jitted scan
    over its batches, gathered on the device) or the store's `read` (one dispatch per batch,
    read on the host); both see the same batches and give the same centroids.
    """
    orders = _batch_orders(len(nodes), cfg, rng)  # (epochs, steps, batch) rows
    schedule = optax.cosine_decay_schedule(cfg.learning_rate, orders.shape[0] * orders.shape[1])
    optimizer = optax.sgd(schedule, momentum=cfg.momentum)
    state = jax.device_put(
        TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats={},
                   opt_state=optimizer.init(params), method_state={}), NamedSharding(mesh, P()))
    update = _make_update(optimizer, cfg, mesh, params.shape[0])
    if isinstance(source, jax.Array):
        state, losses = _level_on_device(update, mesh, cfg)(
            state, source, jax.device_put(nodes.astype(np.int32), NamedSharding(mesh, P())),
            jax.device_put(orders.reshape(-1, cfg.batch_size).astype(np.int32),
                           NamedSharding(mesh, P())))
        losses = np.asarray(losses).reshape(orders.shape[:2])[:, -1]
    else:
        axes = mesh.axis_names
        step = jax.jit(jax.shard_map(update, mesh=mesh, in_specs=(P(), P(axes)),
                                     out_specs=(P(), P())), donate_argnums=0)
        losses = []
        for batches in orders:
            for rows in batches:
                feats, parents = _shard_batch(mesh, source(rows), nodes[rows])
                state, metrics = step(state, {"feats": feats, "parents": parents})
            losses.append(float(metrics.compute()["loss"]))
    for epoch, loss in enumerate(losses):
        logging.info("cluster level %d epoch %d: loss %.4f", level, epoch, loss)
    return state.params


def _batch_orders(num_examples: int, cfg: ClusterConfig, rng: np.random.Generator) -> np.ndarray:
    """(epochs, steps, batch) rows of a level's batches: a permutation per epoch (the remainder
    is reshuffled into the next epoch), rows sorted within a batch (sorted rows read faster
    from a memory-mapped store; the batch stays random)."""
    steps = num_examples // cfg.batch_size
    return np.stack([np.sort(rng.permutation(num_examples)[:steps * cfg.batch_size]
                             .reshape(steps, cfg.batch_size), axis=1)
                     for _ in range(cfg.epochs)])


def _make_update(optimizer: optax.GradientTransformation, cfg: ClusterConfig,
                 mesh: jax.sharding.Mesh, num_nodes: int):
    """One SGD step on this device's share of a batch (`step.make_update`: inside shard_map)."""
    axes = mesh.axis_names

    def loss_fn(params, state, batch):
        feats, parents = batch["feats"], batch["parents"]
        scores = _scores(params, feats, parents)
        targets = sinkhorn(jax.lax.stop_gradient(scores), cfg.epsilon, cfg.sinkhorn_iters,
                           axis_name=axes, segment_ids=parents, num_segments=num_nodes)
        cross_entropy = -jnp.sum(targets * jax.nn.log_softmax(scores / cfg.tau), axis=-1)
        return jnp.mean(cross_entropy), (state.batch_stats, state.method_state, {})

    # The centroids stay on the unit sphere after every update.
    return step_lib.make_update(loss_fn, optimizer, axes, metrics=_METRICS,
                                after_update=lambda s: s.replace(params=l2_normalize(s.params)))


def _level_on_device(update, mesh: jax.sharding.Mesh, cfg: ClusterConfig):
    """(state, features, nodes, batch rows (steps, batch)) -> (state, loss per step): the scan
    of `update` over a level's batches; each device gathers its slice of every batch."""
    axes, per_device = mesh.axis_names, cfg.batch_size // mesh.size

    def level(state, feats, nodes, orders):
        first = jax.lax.axis_index(axes) * per_device

        def one_batch(state, rows):
            rows = jax.lax.dynamic_slice_in_dim(rows, first, per_device)
            state, metrics = update(state, {"feats": feats[rows], "parents": nodes[rows]})
            return state, metrics.compute()["loss"]

        return jax.lax.scan(one_batch, state, orders)

    return jax.jit(jax.shard_map(level, mesh=mesh, in_specs=(P(), P(), P(), P()),
                                 out_specs=(P(), P())), donate_argnums=0)


def _child_scores(params: jax.Array, source, nodes: np.ndarray, cfg: ClusterConfig,
                  mesh: jax.sharding.Mesh) -> np.ndarray:
    """(n, G): every example's scores against its node's G children. Resident features: one
    jitted map over the batches (one dispatch); streamed: batch by batch."""
    axes, num = mesh.axis_names, len(nodes)
    padded = -(-num // cfg.batch_size) * cfg.batch_size
    rows = np.minimum(np.arange(padded), num - 1).astype(np.int32)  # padding repeats the last
    by_rows = NamedSharding(mesh, P(axes))
    if isinstance(source, jax.Array):
        scores = _scores_on_device(mesh, cfg.batch_size // mesh.size)(
            params, source, jax.device_put(nodes.astype(np.int32), NamedSharding(mesh, P())),
            jax.device_put(rows, by_rows))
        return np.asarray(scores)[:num]
    parents = nodes[rows].astype(np.int32)
    score = jax.jit(jax.shard_map(_scores, mesh=mesh, in_specs=(P(), P(axes), P(axes)),
                                  out_specs=P(axes)))
    chunks = [score(params, jax.device_put(source(r), by_rows), jax.device_put(parents[r], by_rows))
              for r in np.split(rows, padded // cfg.batch_size)]
    return np.concatenate([np.asarray(chunk) for chunk in chunks])[:num]


def _scores_on_device(mesh: jax.sharding.Mesh, per_device: int):
    """(centroids, features, nodes, rows) -> (rows, G) scores: each device maps `_scores` over
    its share of the rows in batches of `per_device`, gathering them from the resident copy."""

    def level(centroids, feats, nodes, rows):
        scores = jax.lax.map(lambda r: _scores(centroids, feats[r], nodes[r]),
                             rows.reshape(-1, per_device))
        return scores.reshape(-1, scores.shape[-1])

    return jax.jit(jax.shard_map(level, mesh=mesh, in_specs=(P(), P(), P(), P(mesh.axis_names)),
                                 out_specs=P(mesh.axis_names)))


def _assign(scores: np.ndarray, nodes: np.ndarray, num_nodes: int,
            cfg: ClusterConfig) -> np.ndarray:
    """Each example's child: balanced within its node, or its best-scoring one."""
    if cfg.assign == "argmax":
        return np.argmax(scores, axis=-1).astype(np.int64)
    children = _balanced_assignment(scores, cfg.assign_iters,
                                    segment_ids=jnp.asarray(nodes, jnp.int32),
                                    num_segments=num_nodes)
    return np.asarray(children).astype(np.int64)


_balanced_assignment = jax.jit(balanced_assignment, static_argnames=("num_iters", "num_segments"))


def _scores(centroids: jax.Array, feats: jax.Array, parents: jax.Array) -> jax.Array:
    """(b, G) cosine similarities of each example to its parent node's G centroids."""
    num_nodes, num_groups, dim = centroids.shape
    # One matmul against all nodes' centroids, then a gather of the parent's G columns: a
    # (b, G, D) gather of centroids per example would cost far more memory than (b, nodes*G).
    all_scores = l2_normalize(feats) @ l2_normalize(centroids).reshape(-1, dim).T
    all_scores = all_scores.reshape(-1, num_nodes, num_groups)
    return jnp.take_along_axis(all_scores, parents[:, None, None], axis=1)[:, 0]


def _read_all(features: Features, max_bytes: int) -> np.ndarray:
    """The whole (n, D) float32 matrix, read in one pass (a store: shard by shard)."""
    if isinstance(features, FeatureStore):
        return features.load_all(max_bytes)[1]
    return np.asarray(features, np.float32)


def _shard_batch(mesh: jax.sharding.Mesh, feats: np.ndarray, parents: np.ndarray):
    sharding = NamedSharding(mesh, P(mesh.axis_names))
    return (jax.device_put(feats, sharding),
            jax.device_put(parents.astype(np.int32), sharding))


def _check_features(features: Features) -> tuple[int, int]:
    if not isinstance(features, (np.ndarray, FeatureStore)):
        raise ValueError(f"features must be a NumPy array or a FeatureStore; got "
                         f"{type(features).__name__}.")
    if len(features.shape) != 2:
        raise ValueError(f"features must have shape (examples, dim); got {features.shape}.")
    if isinstance(features, np.ndarray) and not np.issubdtype(features.dtype, np.floating):
        raise ValueError(f"features must be floating point; got {features.dtype}.")
    return features.shape


def _resolve_ids(features: Features, ids: np.ndarray | None, num_examples: int) -> np.ndarray:
    if ids is None:
        return features.ids if isinstance(features, FeatureStore) else np.arange(num_examples)
    ids = np.asarray(ids)
    if ids.shape != (num_examples,):
        raise ValueError(f"ids must have shape ({num_examples},), one per feature row; got "
                         f"{ids.shape}.")
    if isinstance(features, FeatureStore) and not np.array_equal(ids, features.ids):
        raise ValueError("ids differ from the feature store's ids; pass ids=None to use them.")
    if len(np.unique(ids)) != num_examples:
        raise ValueError("example ids must be unique.")
    return ids


def _check_nonempty(nodes: np.ndarray, num_groups: int, depth: int, num_blocks: int) -> None:
    """Every depth-`depth` node needs at least one example per leaf below it."""
    needed = num_groups**(num_blocks - depth)
    sizes = np.bincount(nodes, minlength=num_groups**depth)
    small = np.flatnonzero(sizes < needed)
    if small.size:
        raise EmptyClusterError(
            f"{small.size} tree node(s) at depth {depth} (ids {small[:5].tolist()}) have fewer "
            f"than the {needed} example(s) needed to fill their leaves (sizes "
            f"{sizes[small[:5]].tolist()}); use more data, fewer paths (G, L), more epochs or "
            "a larger epsilon.")
