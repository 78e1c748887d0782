"""Weighted k-nearest-neighbour classifier on L2-normalised features (InstDisc / SimSiam monitor).

Each query takes the k most cosine-similar memory features; neighbour j votes for its label with
weight exp(sim_j / temperature); the class with the largest summed vote wins.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sdr_jax.core.numerics import l2_normalize


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _knn_votes(queries, memory, memory_labels, *, k: int, num_classes: int, temperature: float):
    sims = l2_normalize(queries) @ l2_normalize(memory).T                     # (q, m)
    top_sims, top_idx = jax.lax.top_k(sims, k)                                 # (q, k)
    weights = jnp.exp(top_sims / temperature)
    onehot = jax.nn.one_hot(memory_labels[top_idx], num_classes)              # (q, k, c)
    return jnp.einsum("qk,qkc->qc", weights, onehot)


def knn_predict(memory: np.ndarray, memory_labels: np.ndarray, queries: np.ndarray, *, k: int = 20,
                temperature: float = 0.1, num_classes: int | None = None,
                chunk_size: int = 1024) -> np.ndarray:
    """Predicted labels of `queries` (n, d) given a labelled memory bank (m, d)."""
    memory_labels = np.asarray(memory_labels)
    if len(memory) != len(memory_labels):
        raise ValueError(f"kNN memory has {len(memory)} features but {len(memory_labels)} labels.")
    if len(memory) == 0 or len(queries) == 0:
        raise ValueError("kNN needs a non-empty memory bank and at least one query.")
    if num_classes is None:
        num_classes = int(memory_labels.max()) + 1
    k = min(k, len(memory))
    memory = jnp.asarray(memory)
    labels = jnp.asarray(memory_labels, jnp.int32)
    preds = []
    for start in range(0, len(queries), chunk_size):
        chunk = np.asarray(queries[start:start + chunk_size])
        pad = chunk_size - len(chunk)  # pad to a fixed chunk: one compile for every chunk
        chunk = np.pad(chunk, ((0, pad), (0, 0)))
        votes = _knn_votes(jnp.asarray(chunk), memory, labels, k=k, num_classes=num_classes,
                           temperature=temperature)
        preds.append(np.asarray(jnp.argmax(votes, axis=-1))[:len(chunk) - pad])
    return np.concatenate(preds)


def knn_accuracy(memory, memory_labels, queries, query_labels, **kwargs) -> float:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier."""
    preds = knn_predict(memory, memory_labels, queries, **kwargs)
    return float(np.mean(preds == np.asarray(query_labels)))
