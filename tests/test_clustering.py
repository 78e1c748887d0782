"""Hierarchical Sinkhorn clustering: recovery of hierarchical blobs, the tree convention,
one device vs eight, streaming from a store, and clear errors."""
import dataclasses

import jax
import numpy as np
import pytest

from sdr_jax.jobs.cluster.clustering import ClusterConfig, EmptyClusterError, fit
from sdr_jax.jobs.cluster.store import FeatureStore, FeatureWriter
from sdr_jax.jobs.cluster.summary import nmi


def index_to_path(index, num_groups, num_blocks):
    """Reference path arithmetic of the project convention (block 0 least significant).

    Swap for sdr_jax.core.paths.PathSpec's index_to_path once it lands."""
    return np.stack([(index // num_groups**l) % num_groups for l in range(num_blocks)], axis=-1)


def hierarchical_blobs(num_groups, num_blocks, per_leaf, dim=16, noise=0.02, seed=0):
    """G**L blobs; a blob's path codes pick its offsets, coarser for later blocks, so the
    top-level groups (last block's code) are the best separated."""
    rng = np.random.default_rng(seed)
    axes = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:num_blocks * num_groups]
    axes = axes.reshape(num_blocks, num_groups, dim)
    leaves = np.repeat(np.arange(num_groups**num_blocks), per_leaf)
    paths = index_to_path(leaves, num_groups, num_blocks)
    scale = 2.0 ** np.arange(num_blocks)  # Block L-1 (the top split) gets the largest offset.
    centers = sum(scale[l] * axes[l, paths[:, l]] for l in range(num_blocks))
    feats = centers + noise * scale.sum() * rng.normal(size=centers.shape)
    order = rng.permutation(len(leaves))
    return feats[order].astype(np.float32), leaves[order]


CFG = ClusterConfig(epsilon=0.05, sinkhorn_iters=3, tau=0.1, learning_rate=0.5, epochs=5,
                    batch_size=256, seed=0)


def test_recovers_hierarchical_blobs_with_balanced_sizes():
    feats, truth = hierarchical_blobs(2, 3, per_leaf=200)
    result = fit(feats, None, 2, 3, CFG)
    assert nmi(truth, result.leaves) > 0.98
    top_truth = index_to_path(truth, 2, 3)[:, -1]
    assert nmi(top_truth, result.node_ids(1)) > 0.99
    sizes = result.sizes(3)
    assert sizes.max() / sizes.min() < 1.1
    # Every recovered leaf is one generating blob, and the tree matches: blobs sharing the
    # last block's code share the depth-1 node.
    for leaf in range(8):
        members = truth[result.leaves == leaf]
        assert np.mean(members == np.bincount(members).argmax()) > 0.98


def test_tree_codes_follow_the_centroids_and_the_path_convention():
    feats, _ = hierarchical_blobs(3, 2, per_leaf=60, seed=1)
    result = fit(feats, np.arange(len(feats)) + 1000, 3, 2,
                 dataclasses.replace(CFG, batch_size=128, epochs=2))
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    node = np.zeros(len(feats), np.int64)
    children = []
    for level, cents in enumerate(result.centroids):
        assert cents.shape == (3**level, 3, 16)
        child = np.einsum("nd,ngd->ng", unit, cents[node]).argmax(axis=1)
        children.append(child)
        node = node * 3 + child
    np.testing.assert_array_equal(node, result.leaves)
    # Level l's choice is block L-1-l's code; leaf id == path index.
    np.testing.assert_array_equal(result.paths, index_to_path(result.leaves, 3, 2))
    np.testing.assert_array_equal(result.paths[:, 1], children[0])
    np.testing.assert_array_equal(result.paths[:, 0], children[1])
    assert result.provenance["cluster_config"]["batch_size"] == 128


def test_eight_devices_match_one_device():
    assert jax.device_count() == 8, "conftest.py should fake 8 CPU devices"
    feats, _ = hierarchical_blobs(2, 2, per_leaf=128, seed=2)
    cfg = ClusterConfig(epsilon=0.05, sinkhorn_iters=3, tau=0.1, learning_rate=0.5, epochs=2,
                        batch_size=128, seed=3)
    one = fit(feats, None, 2, 2, cfg, mesh=jax.make_mesh((1,), ("data",),
                                                         devices=jax.devices()[:1]))
    eight = fit(feats, None, 2, 2, cfg, mesh=jax.make_mesh((8,), ("data",)))
    for c1, c8 in zip(one.centroids, eight.centroids):
        np.testing.assert_allclose(c1, c8, atol=2e-5)
    np.testing.assert_array_equal(one.leaves, eight.leaves)


def test_feature_store_gives_the_same_result_as_the_array(tmp_path):
    feats, _ = hierarchical_blobs(2, 2, per_leaf=64, seed=4)
    ids = np.arange(len(feats)) * 7
    with FeatureWriter(tmp_path / "store", shard_rows=50) as writer:
        writer.write(ids, feats)
    cfg = ClusterConfig(epochs=1, batch_size=64)
    from_store = fit(FeatureStore(tmp_path / "store"), None, 2, 2, cfg,
                     provenance={"dataset": "blobs"})
    from_array = fit(feats, ids, 2, 2, cfg)
    np.testing.assert_array_equal(from_store.ids, ids)
    np.testing.assert_array_equal(from_store.leaves, from_array.leaves)
    np.testing.assert_allclose(from_store.centroids[1], from_array.centroids[1], atol=1e-6)
    assert from_store.provenance["dataset"] == "blobs"


def test_empty_cluster_is_a_clear_error():
    feats = np.ones((64, 8), np.float32)  # All identical: argmax sends everyone to one child.
    with pytest.raises(EmptyClusterError, match="depth 1"):
        fit(feats, None, 2, 2, ClusterConfig(epochs=1, batch_size=32))
    with pytest.raises(EmptyClusterError, match="fewer than the 8"):  # 6 examples, 8 leaves.
        fit(np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32), None, 2, 3,
            ClusterConfig(epochs=1, batch_size=1), mesh=jax.make_mesh((1,), ("data",),
                                                                      devices=jax.devices()[:1]))


def test_bad_inputs_are_rejected_clearly(tmp_path):
    feats = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    cfg = ClusterConfig(epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="one per feature row"):
        fit(feats, np.arange(63), 2, 2, cfg)
    with pytest.raises(ValueError, match="unique"):
        fit(feats, np.zeros(64, int), 2, 2, cfg)
    with pytest.raises(ValueError, match="multiple of the 8 devices"):
        fit(feats, None, 2, 2, ClusterConfig(batch_size=12))
    with pytest.raises(ValueError, match="exceeds the 64 examples"):
        fit(feats, None, 2, 2, ClusterConfig(batch_size=128))
    with pytest.raises(ValueError, match="floating"):
        fit(feats.astype(np.int32), None, 2, 2, cfg)
    with pytest.raises(ValueError, match="unknown clustering config keys"):
        fit(feats, None, 2, 2, {"epsilon": 0.05, "epoch": 3})
    with pytest.raises(ValueError, match="epsilon"):
        ClusterConfig(epsilon=0.0)
    with FeatureWriter(tmp_path / "store") as writer:
        writer.write(np.arange(64), feats)
    with pytest.raises(ValueError, match="differ from the feature store"):
        fit(FeatureStore(tmp_path / "store"), np.arange(64)[::-1], 2, 2, cfg)


def test_config_dict_round_trip():
    config = ClusterConfig().to_config()
    config.epochs = 7
    assert ClusterConfig.from_mapping(config) == ClusterConfig(epochs=7)


def test_resident_features_train_like_the_streaming_loop():
    """The on-device scan over a level's batches == one host dispatch per batch."""
    feats, _ = hierarchical_blobs(2, 2, per_leaf=96, seed=5)
    cfg = ClusterConfig(epochs=3, batch_size=64, seed=1)
    seconds = {}
    on_device = fit(feats, None, 2, 2, cfg, seconds=seconds)
    streamed = fit(feats, None, 2, 2, dataclasses.replace(cfg, device_features_mb=0))
    for a, b in zip(on_device.centroids, streamed.centroids):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(on_device.leaves, streamed.leaves)
    # The phase timings the benchmark prints; they stay out of the result's provenance.
    assert set(seconds) == {"load", "init", "train", "scores", "assign"}
    assert all(v >= 0 for v in seconds.values()) and seconds["train"] > 0
    assert "seconds" not in on_device.provenance


def test_balanced_assignment_evens_out_a_skewed_pool():
    """Blob sizes 4:2:1:1 into 4 leaves: best-child assignment follows the blobs (max/min
    near 4); the balanced assignment gives every leaf the same number of examples."""
    rng = np.random.default_rng(6)
    centers = np.linalg.qr(rng.normal(size=(16, 16)))[0][:4]
    sizes = [512, 256, 128, 128]
    feats = np.concatenate([c + 0.05 * rng.normal(size=(n, 16)) for c, n in zip(centers, sizes)])
    feats = feats[rng.permutation(len(feats))].astype(np.float32)
    cfg = ClusterConfig(epochs=3, batch_size=128)
    balanced = fit(feats, None, 2, 2, cfg).sizes(2)
    best = fit(feats, None, 2, 2, dataclasses.replace(cfg, assign="argmax")).sizes(2)
    assert balanced.max() / balanced.min() <= 1.05, balanced
    assert best.max() / best.min() > 3, best


def test_cluster_config_rejects_unknown_assignment():
    with pytest.raises(ValueError, match="'balanced' or 'argmax'"):
        ClusterConfig(assign="greedy")
