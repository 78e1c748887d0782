"""SimSiam loss on hand-made vectors, symmetry, stop-gradient; collapse monitor."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdr_jax.methods import collapse_std, negative_cosine
from sdr_jax.methods.simsiam import simsiam_loss


def test_negative_cosine_hand_made():
    p = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    z = jnp.array([[2.0, 0.0], [0.0, -1.0], [1.0, 1.0]])
    # cosines 1, -1, 1/sqrt(2)
    np.testing.assert_allclose(negative_cosine(p, z), -(1 - 1 + 2**-0.5) / 3, rtol=1e-6)


def test_simsiam_loss_symmetric_and_bounded():
    rng = np.random.default_rng(0)
    p1, p2, z1, z2 = (jnp.asarray(rng.normal(size=(5, 7)), jnp.float32) for _ in range(4))
    loss = simsiam_loss(p1, p2, z1, z2)
    np.testing.assert_allclose(loss, simsiam_loss(p2, p1, z2, z1), rtol=1e-6)
    np.testing.assert_allclose(loss, 0.5 * (negative_cosine(p1, z2) + negative_cosine(p2, z1)), rtol=1e-6)
    assert -1 <= loss <= 1
    np.testing.assert_allclose(simsiam_loss(z2, z1, z1, z2), -1.0, rtol=1e-6)


def test_no_gradient_through_the_target():
    rng = np.random.default_rng(1)
    p, z = (jnp.asarray(rng.normal(size=(4, 3)), jnp.float32) for _ in range(2))
    gp, gz = jax.grad(negative_cosine, argnums=(0, 1))(p, z)
    assert np.abs(gz).max() == 0 and np.abs(gp).max() > 0
    # Gradient w.r.t. p matches the analytic one with z held fixed.
    pn = p / jnp.linalg.norm(p, axis=1, keepdims=True)
    zn = z / jnp.linalg.norm(z, axis=1, keepdims=True)
    want = -(zn - jnp.sum(pn * zn, 1, keepdims=True) * pn) / jnp.linalg.norm(p, axis=1, keepdims=True) / 4
    np.testing.assert_allclose(gp, want, rtol=1e-5, atol=1e-7)


def test_collapse_std():
    rng = np.random.default_rng(2)
    spread = jnp.asarray(rng.normal(size=(4096, 64)), jnp.float32)
    np.testing.assert_allclose(collapse_std(spread), 1 / np.sqrt(64), rtol=0.05)
    collapsed = jnp.tile(spread[:1], (128, 1)) * jnp.linspace(1, 3, 128)[:, None]
    assert collapse_std(collapsed) < 1e-6


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        negative_cosine(jnp.ones((2, 3)), jnp.ones((2, 4)))


def test_l2_distillation_is_the_elementwise_mean_squared_error_to_a_fixed_teacher():
    from sdr_jax.methods.distill import l2_distill_loss
    rng = np.random.default_rng(2)
    p, z = (rng.normal(size=(4, 6)).astype(np.float32) for _ in range(2))
    np.testing.assert_allclose(l2_distill_loss(jnp.asarray(p), jnp.asarray(z)),
                               np.mean((p - z) ** 2), rtol=1e-6)
    grad_p, grad_z = jax.grad(l2_distill_loss, argnums=(0, 1))(jnp.asarray(p), jnp.asarray(z))
    np.testing.assert_allclose(grad_p, 2 * (p - z) / p.size, rtol=1e-5)
    assert not np.any(np.asarray(grad_z))


@pytest.mark.parametrize("kind", ["siamkd", "l2"])
def test_distillation_teacher_normalises_each_batch_with_its_own_statistics(kind):
    """The n teacher passes run as one vmapped pass; each must equal a separate train-mode pass
    on its own batch (BN over that batch only), not a pass over all n batches together."""
    from models_testlib import images, random_variables, tiny_config

    from sdr_jax import models
    from sdr_jax.methods.distill import KD_LOSSES, distill_losses

    config = tiny_config(kd_head=True)
    model = models.build_model(config)
    path = jnp.asarray(models.path_spec(config).full_path())
    views = jnp.stack([images(4, seed=s) for s in range(3)])  # (3 batches, 4 images, ...)
    variables = random_variables(model, views[0], path)

    def teacher_z(v):
        return model.apply(variables, v, path, train=True, mutable=["batch_stats"])[0]["z"]

    z = [teacher_z(v) for v in views]
    predictions = jnp.asarray(np.random.default_rng(0).normal(size=(3, *z[0].shape)), jnp.float32)
    got = distill_losses(kind, model, variables["params"], variables["batch_stats"], predictions,
                         views, path)
    want = [KD_LOSSES[kind](predictions[i], z[i]) for i in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    pooled = teacher_z(views.reshape(-1, *views.shape[2:])).reshape(3, 4, -1)
    assert not np.allclose(pooled, jnp.stack(z), atol=1e-3)  # the per-batch BN is what differs
