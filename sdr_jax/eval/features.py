"""Backbone features of a whole dataset split, data-parallel over the mesh, and kNN monitors."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from sdr_jax.data import input_pipeline
from sdr_jax.eval.knn import knn_accuracy
from sdr_jax.core.mesh import batch_sharded, shard_batch

FeatureFn = Callable[[jax.Array], jax.Array]


def jit_feature_fn(apply_fn: FeatureFn, mesh: Mesh) -> FeatureFn:
    """Jits `images -> features` with the batch split over the mesh (one compile per shape)."""
    sharding = batch_sharded(mesh)
    return jax.jit(apply_fn, in_shardings=sharding, out_shardings=sharding)


def iter_features(feature_fn: FeatureFn, source, *, batch_size: int, image_size: int,
                  mesh: Mesh, max_examples: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Streams {'feature', 'label', 'id'} of the real examples of `source`, batch by batch.

    Every process yields every example (gathered over processes). The next batch is dispatched
    before the previous one is fetched, so the device computes while the host loads images.
    """
    if max_examples is not None and max_examples < len(source):
        source = Prefix(source, max_examples)
    local_batch = batch_size // jax.process_count()
    pending = None
    for batch in input_pipeline.eval_batches(source, batch_size=local_batch, image_size=image_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
        out = feature_fn(shard_batch({"image": batch["image"]}, mesh)["image"])
        current = {"feature": out, **shard_batch({k: batch[k] for k in ("label", "id", "mask")},
                                                  mesh)}
        if pending is not None:
            yield _real_rows(pending)
        pending = current
    if pending is not None:
        yield _real_rows(pending)


def extract_features(feature_fn: FeatureFn, source, *, batch_size: int, image_size: int,
                     mesh: Mesh, max_examples: int | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, ids) of every example of `source` (or its first `max_examples`)."""
    batches = list(iter_features(feature_fn, source, batch_size=batch_size,
                                 image_size=image_size, mesh=mesh, max_examples=max_examples))
    return tuple(np.concatenate([b[key] for b in batches]) for key in ("feature", "label", "id"))


def _real_rows(batch: dict) -> dict[str, np.ndarray]:
    gathered = _gather(batch)
    keep = gathered.pop("mask").astype(bool)
    return {key: value[keep] for key, value in gathered.items()}


def _gather(tree: dict) -> dict:
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


class Prefix:
    """The first n records of a random-access source."""

    def __init__(self, source, n: int):
        self._source, self._n = source, n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: int):
        if not 0 <= index < self._n:
            raise IndexError(index)
        return self._source[index]


def knn_task_accuracies(feature_fn: FeatureFn, tasks: Iterable[str], *, open_task, mesh: Mesh,
                        batch_size: int, image_size: int, k: int, temperature: float,
                        max_train: int | None = None) -> Mapping[str, float]:
    """kNN top-1 accuracy per task: the train split is the memory, the test split the queries.

    `open_task(name)` returns (train_source, test_source, num_classes).
    """
    results = {}
    for name in tasks:
        train_source, test_source, num_classes = open_task(name)
        memory, memory_labels, _ = extract_features(
            feature_fn, train_source, batch_size=batch_size, image_size=image_size, mesh=mesh,
            max_examples=max_train)
        queries, query_labels, _ = extract_features(
            feature_fn, test_source, batch_size=batch_size, image_size=image_size, mesh=mesh)
        results[name] = knn_accuracy(memory, memory_labels, queries, query_labels, k=k,
                                     temperature=temperature, num_classes=num_classes)
    return results
