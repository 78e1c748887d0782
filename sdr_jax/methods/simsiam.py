"""SimSiam (Chen & He, 2021): predictor on both branches, stop-gradient, no extra state.

L = D(p1, z2)/2 + D(p2, z1)/2 with D(p, z) = -cos(p, stop_grad(z)) (DESIGN §2.1).
"""
from __future__ import annotations

import jax

from sdr_jax import methods


def simsiam_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
    """Symmetric SimSiam loss D(p1, z2)/2 + D(p2, z1)/2, in [-1, 1]."""
    return 0.5 * (methods.negative_cosine(p1, z2) + methods.negative_cosine(p2, z1))


class Method(methods.SSLMethod):
    name, title = "simsiam", "SimSiam"
    # SimSiam §4.2: the predictor keeps a fixed lr (it must keep adapting to the latest
    # representations; a decaying lr hurts).

    def forward(self, model, params, batch_stats, method_state, view1, view2, path):
        out1, out2, batch_stats = methods.two_views(model, params, batch_stats, view1, view2, path)
        loss = simsiam_loss(out1["p"], out2["p"], out1["z"], out2["z"])
        return loss, batch_stats, method_state, (out1, out2)
