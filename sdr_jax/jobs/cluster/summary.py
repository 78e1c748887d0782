"""Cluster-quality numbers: sizes, balance, purity and NMI against reference labels (NumPy)."""
from typing import Any

import numpy as np

from sdr_jax.data.assignments import Assignments


def contingency(labels: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """(num_labels, num_clusters) co-occurrence counts."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and clusters {clusters.shape} must be 1-D and of "
                         "equal length (one per example).")
    _, label_idx = np.unique(labels, return_inverse=True)
    _, cluster_idx = np.unique(clusters, return_inverse=True)
    table = np.zeros((label_idx.max() + 1, cluster_idx.max() + 1), np.int64)
    np.add.at(table, (label_idx, cluster_idx), 1)
    return table


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Fraction of examples whose cluster's majority label is their own label."""
    table = contingency(labels, clusters)
    return float(table.max(axis=0).sum() / table.sum())


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn's default)."""
    table = contingency(labels, clusters).astype(np.float64)
    p = table / table.sum()
    p_label, p_cluster = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mutual = np.sum(p[nz] * np.log(p[nz] / np.outer(p_label, p_cluster)[nz]))
    entropy = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))
    h_label, h_cluster = entropy(p_label), entropy(p_cluster)
    if h_label == 0 and h_cluster == 0:
        return 1.0  # Both trivial partitions: identical.
    return float(max(mutual, 0.0) / ((h_label + h_cluster) / 2))


def summarize(assignments: Assignments, labels: np.ndarray | None = None) -> dict[str, Any]:
    """Sizes and max/min balance per depth; with `labels` (one per example, e.g. domains),
    purity and NMI of the top-level (depth-1) clusters and NMI of the leaves."""
    out: dict[str, Any] = {"sizes": {}, "balance": {}}
    for depth in range(1, assignments.num_blocks + 1):
        sizes = assignments.sizes(depth)
        out["sizes"][depth] = sizes.tolist()
        out["balance"][depth] = float(sizes.max() / sizes.min()) if sizes.min() else float("inf")
    if labels is not None:
        top = assignments.node_ids(1)
        out["top_purity"] = purity(labels, top)
        out["top_nmi"] = nmi(labels, top)
        out["leaf_nmi"] = nmi(labels, assignments.leaves)
    return out
