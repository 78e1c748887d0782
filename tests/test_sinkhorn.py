"""Sinkhorn solver: marginals, a plain NumPy reference, and the distributed solve."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sdr_jax.jobs.cluster.sinkhorn import balanced_assignment, sinkhorn


def numpy_sinkhorn(scores, epsilon, num_iters, segment_ids=None):
    """Textbook (non-log) Sinkhorn-Knopp, solved independently for every segment."""
    scores = np.asarray(scores, np.float64)
    segment_ids = np.zeros(len(scores), int) if segment_ids is None else np.asarray(segment_ids)
    out = np.zeros_like(scores)
    for seg in np.unique(segment_ids):
        rows = segment_ids == seg
        q = np.exp(scores[rows] / epsilon)
        for _ in range(num_iters):
            q *= (rows.sum() / scores.shape[1]) / q.sum(axis=0, keepdims=True)
            q /= q.sum(axis=1, keepdims=True)
        out[rows] = q
    return out


def _scores(n, k, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, 16))
    c = np.random.default_rng(seed + 1).normal(size=(k, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return (x @ c.T).astype(np.float32)


def test_marginals_small_epsilon():
    scores = _scores(512, 8)
    u = np.asarray(sinkhorn(scores, 0.02, 100))
    assert np.all(np.isfinite(u))
    np.testing.assert_allclose(u.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(u.sum(axis=0), 512 / 8, rtol=1e-2)


def test_marginals_per_segment():
    scores = _scores(600, 4)
    segments = np.random.default_rng(3).integers(0, 5, size=600)
    u = np.asarray(sinkhorn(scores, 0.05, 100, segment_ids=segments, num_segments=6))
    np.testing.assert_allclose(u.sum(axis=1), 1.0, atol=1e-5)
    for seg in range(5):
        rows = segments == seg
        np.testing.assert_allclose(u[rows].sum(axis=0), rows.sum() / 4, rtol=1e-2)


def test_matches_numpy_reference():
    scores = _scores(64, 5)
    segments = np.random.default_rng(1).integers(0, 3, size=64)
    np.testing.assert_allclose(sinkhorn(scores, 0.2, 7), numpy_sinkhorn(scores, 0.2, 7),
                               atol=1e-5)
    np.testing.assert_allclose(
        sinkhorn(scores, 0.2, 7, segment_ids=segments, num_segments=3),
        numpy_sinkhorn(scores, 0.2, 7, segments), atol=1e-5)


def test_balances_a_skewed_batch():
    # Every example prefers cluster 0; the balanced posterior must still spread the mass.
    scores = np.tile(np.array([[0.9, 0.1, 0.0, -0.2]], np.float32), (40, 1))
    scores += np.random.default_rng(0).normal(scale=0.05, size=scores.shape).astype(np.float32)
    u = np.asarray(sinkhorn(scores, 0.05, 50))
    np.testing.assert_allclose(u.sum(axis=0), 10.0, rtol=1e-2)


@pytest.mark.parametrize("with_segments", [False, True])
def test_distributed_equals_one_device(with_segments):
    assert jax.device_count() == 8, "conftest.py should fake 8 CPU devices"
    mesh = jax.make_mesh((8,), ("data",))
    scores = _scores(256, 6)
    segments = np.random.default_rng(2).integers(0, 4, size=256).astype(np.int32)
    kwargs = {"num_segments": 4} if with_segments else {}

    def solve(s, seg):
        return sinkhorn(s, 0.03, 20, axis_name="data",
                        segment_ids=seg if with_segments else None, **kwargs)

    sharded = jax.jit(jax.shard_map(solve, mesh=mesh, in_specs=(P("data"), P("data")),
                                    out_specs=P("data")))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    u_sharded = sharded(put(scores), put(segments))
    u_single = sinkhorn(scores, 0.03, 20, segment_ids=segments if with_segments else None,
                        **kwargs)
    np.testing.assert_allclose(np.asarray(u_sharded), np.asarray(u_single), atol=1e-5)


def test_bad_inputs_are_rejected_clearly():
    scores = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="shape"):
        sinkhorn(jnp.zeros((4,)), 0.05, 3)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(scores, 0.0, 3)
    with pytest.raises(ValueError, match="num_iters"):
        sinkhorn(scores, 0.05, 0)
    with pytest.raises(ValueError, match="together"):
        sinkhorn(scores, 0.05, 3, segment_ids=jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match="one per example"):
        sinkhorn(scores, 0.05, 3, segment_ids=jnp.zeros(5, jnp.int32), num_segments=2)
    with pytest.raises(ValueError, match="floating"):
        sinkhorn(jnp.zeros((4, 3), jnp.int32), 0.05, 3)


def test_balanced_assignment_is_the_optimal_equal_split_for_two_clusters():
    """For k=2 the best equal split is a threshold on s0 - s1 (the top half to cluster 0)."""
    scores = np.random.default_rng(3).normal(size=(200, 2)).astype(np.float32)
    chosen = np.asarray(balanced_assignment(scores, 300))
    margin = scores[:, 0] - scores[:, 1]
    np.testing.assert_array_equal(chosen == 0, margin >= np.median(margin))


def test_balanced_assignment_per_segment_on_skewed_scores():
    rng = np.random.default_rng(4)
    scores = np.array([0.9, 0.1, 0.0, -0.2], np.float32) + rng.normal(
        scale=0.05, size=(400, 4)).astype(np.float32)  # everybody prefers cluster 0
    segments = rng.integers(0, 3, size=400).astype(np.int32)
    chosen = np.asarray(balanced_assignment(scores, 300, segment_ids=segments, num_segments=3))
    for seg in range(3):
        counts = np.bincount(chosen[segments == seg], minlength=4)
        assert counts.max() - counts.min() <= 2, counts  # ~135 examples: 33-34 each, up to ties


def test_balanced_assignment_distributed_equals_one_device():
    mesh = jax.make_mesh((8,), ("data",))
    scores = _scores(256, 4)
    segments = np.random.default_rng(5).integers(0, 3, size=256).astype(np.int32)
    solve = lambda s, seg: balanced_assignment(s, 200, axis_name="data", segment_ids=seg,
                                               num_segments=3)
    sharded = jax.jit(jax.shard_map(solve, mesh=mesh, in_specs=(P("data"), P("data")),
                                    out_specs=P("data")))
    put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
    np.testing.assert_array_equal(
        np.asarray(sharded(put(scores), put(segments))),
        np.asarray(balanced_assignment(scores, 200, segment_ids=segments, num_segments=3)))
