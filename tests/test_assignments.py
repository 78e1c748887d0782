"""Assignments file: tree queries under the path convention, round trip, validation, summary."""
import json
import os

import numpy as np
import pytest

from sdr_jax.data import assignments as assignments_lib
from sdr_jax.data.assignments import Assignments, AssignmentsError
from sdr_jax.jobs.cluster.summary import nmi, purity, summarize


def index_to_path(index, num_groups, num_blocks):
    """Reference path arithmetic of the project convention (block 0 least significant).

    Swap for sdr_jax.core.paths.PathSpec's index_to_path once it lands."""
    return np.stack([(index // num_groups**l) % num_groups for l in range(num_blocks)], axis=-1)


G, L = 3, 3


def _assignments(n=300, seed=0, ids=None):
    rng = np.random.default_rng(seed)
    leaves = np.concatenate([np.arange(G**L), rng.integers(0, G**L, n - G**L)])
    centroids = tuple(rng.normal(size=(G**l, G, 5)) for l in range(L))
    ids = np.array([f"img_{i}" for i in range(n)]) if ids is None else ids
    return Assignments(ids=ids, leaves=leaves, num_groups=G, num_blocks=L, centroids=centroids,
                       provenance={"checkpoint": "simsiam/ckpt_100", "dataset": "mosaic",
                                   "split": "train"})


def test_paths_follow_the_path_index_convention():
    a = _assignments()
    np.testing.assert_array_equal(a.paths, index_to_path(a.leaves, G, L))
    np.testing.assert_array_equal(a.node_ids(1), a.paths[:, -1])  # Top split = last block.
    np.testing.assert_array_equal(a.node_ids(L), a.leaves)
    np.testing.assert_array_equal(a.node_ids(0), 0)
    assert a.sizes(2).sum() == 300 and len(a.sizes(2)) == G**2


def test_partial_path_is_the_union_of_its_leaves():
    a = _assignments()
    paths = a.paths
    np.testing.assert_array_equal(a.indices_for([-1, -1, -1]), np.arange(300))
    for partial in ([-1, -1, 2], [-1, 0, 1], [2, 1, 0], [-1, 2, 2]):
        fixed = np.array(partial) >= 0
        expected = np.flatnonzero(np.all(paths[:, fixed] == np.array(partial)[fixed], axis=1))
        np.testing.assert_array_equal(a.indices_for(partial), expected)
        np.testing.assert_array_equal(a.ids_for(partial), a.ids[expected])
    # Depth-2 node [-1, 0, 1] holds exactly the leaves whose last two codes are (0, 1).
    leaves_under = {int(l) for l in a.leaves[a.indices_for([-1, 0, 1])]}
    assert leaves_under == {l for l in range(G**L) if tuple(index_to_path(l, G, L)[1:]) == (0, 1)}


def test_bad_partial_paths():
    a = _assignments()
    with pytest.raises(AssignmentsError, match="leading blocks"):
        a.indices_for([0, -1, 1])
    with pytest.raises(AssignmentsError, match="3 int codes"):
        a.indices_for([-1, 1])
    with pytest.raises(AssignmentsError, match=r"\[0, 3\)"):
        a.indices_for([-1, -1, 3])


def test_round_trip(tmp_path):
    a = _assignments()
    a.save(tmp_path / "assign.npz")
    assert os.listdir(tmp_path) == ["assign.npz"]  # No temp file left behind.
    b = assignments_lib.load(tmp_path / "assign.npz", num_groups=G, num_blocks=L,
                             dataset_ids=a.ids[::-1])
    np.testing.assert_array_equal(b.ids, a.ids)
    np.testing.assert_array_equal(b.leaves, a.leaves)
    for ca, cb in zip(a.centroids, b.centroids):
        np.testing.assert_allclose(cb, ca.astype(np.float32))
    assert b.provenance == a.provenance
    with np.load(tmp_path / "assign.npz") as raw:  # Readable without this code, too.
        np.testing.assert_array_equal(raw["paths"], a.paths)
        np.testing.assert_array_equal(raw["sizes_depth1"], a.sizes(1))


def test_integer_ids_round_trip(tmp_path):
    a = _assignments(ids=np.arange(300) * 3)
    a.save(tmp_path / "a.npz")
    np.testing.assert_array_equal(assignments_lib.load(tmp_path / "a.npz").ids, a.ids)


def test_load_validation(tmp_path):
    with pytest.raises(AssignmentsError, match="no assignments file"):
        assignments_lib.load(tmp_path / "missing.npz")
    a = _assignments()
    path = tmp_path / "a.npz"
    a.save(path)
    with pytest.raises(AssignmentsError, match="num_groups"):
        assignments_lib.load(path, num_groups=4)
    with pytest.raises(AssignmentsError, match="num_blocks"):
        assignments_lib.load(path, num_blocks=4)
    with pytest.raises(AssignmentsError, match="1 dataset ids unassigned"):
        assignments_lib.load(path, dataset_ids=np.concatenate([a.ids[1:], ["img_new"]]))
    with np.load(path) as raw:
        arrays = dict(raw)
    metadata = json.loads(str(arrays["metadata"]))
    np.savez(path, **{**arrays, "metadata": np.array(json.dumps({**metadata,
                                                                 "format_version": 0}))})
    with pytest.raises(AssignmentsError, match="format version 0"):
        assignments_lib.load(path)
    np.savez(path, **{**arrays, "paths": arrays["paths"][:, ::-1]})
    with pytest.raises(AssignmentsError, match="path convention"):
        assignments_lib.load(path)
    del arrays["centroids_level1"]
    np.savez(path, **arrays)
    with pytest.raises(AssignmentsError, match="centroids_level1"):
        assignments_lib.load(path)
    path.write_bytes(b"not a zip")
    with pytest.raises(AssignmentsError, match="not a readable"):
        assignments_lib.load(path)


def test_constructor_validation():
    a = _assignments()
    fields = dict(ids=a.ids, leaves=a.leaves, num_groups=G, num_blocks=L, centroids=a.centroids)
    with pytest.raises(AssignmentsError, match=r"leaf ids must lie in \[0, 27\)"):
        Assignments(**{**fields, "leaves": np.full(300, 27)})  # k != G**L clusters.
    with pytest.raises(AssignmentsError, match="3 centroid levels"):
        Assignments(**{**fields, "centroids": a.centroids[:2]})
    with pytest.raises(AssignmentsError, match="level 1"):
        Assignments(**{**fields, "centroids": (a.centroids[0], a.centroids[2], a.centroids[2])})
    with pytest.raises(AssignmentsError, match="unique"):
        Assignments(**{**fields, "ids": np.zeros(300, int)})
    with pytest.raises(AssignmentsError, match="JSON"):
        Assignments(**fields, provenance={"x": object()})


def test_nmi_and_purity_match_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 1000)
    clusters = np.where(rng.random(1000) < 0.7, labels, rng.integers(0, 7, 1000))
    assert nmi(labels, clusters) == pytest.approx(
        metrics.normalized_mutual_info_score(labels, clusters), abs=1e-10)
    assert nmi(labels, labels * 10 + 3) == pytest.approx(1.0)
    table = metrics.cluster.contingency_matrix(labels, clusters)
    assert purity(labels, clusters) == pytest.approx(table.max(axis=0).sum() / 1000)
    with pytest.raises(ValueError, match="equal length"):
        nmi(labels, clusters[:10])


def test_summary():
    a = _assignments()
    domains = a.paths[:, -1] * 2  # Top-level clusters are exactly the domains.
    out = summarize(a, labels=domains)
    assert out["sizes"][1] == a.sizes(1).tolist()
    assert out["balance"][3] == a.sizes(3).max() / a.sizes(3).min()
    assert out["top_purity"] == 1.0 and out["top_nmi"] == pytest.approx(1.0)
    assert 0 < out["leaf_nmi"] < 1
    assert "top_nmi" not in summarize(a)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random"])
def test_a_damaged_file_is_one_clear_error(tmp_path, damage):
    path = tmp_path / "a.npz"
    _assignments().save(path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                      "random": np.random.default_rng(0).bytes(len(data))}[damage])
    with pytest.raises(AssignmentsError, match="not a readable assignments file"):
        assignments_lib.load(path)
