"""BYOL (Grill et al., 2020): an online network with a predictor regresses the projections of
a target network, the target being an exponential moving average (EMA) of the online weights.

  loss = (2 - 2 cos(p1, sg(z2'))) + (2 - 2 cos(p2, sg(z1')))      (symmetric, in [0, 8])

with p = the online prediction, z' = the target projection of the other view. The target is
the same network (backbone + projector; its predictor and any SiamKD head are carried but
unused) with its own parameters and batch statistics, held in `TrainState.method_state`:
  * params: after every optimiser step, target <- tau * target + (1 - tau) * online, with the
    cosine schedule tau(k) = 1 - (1 - base_momentum) * (cos(pi * k / K) + 1) / 2 over the K
    steps of the run (k = 0 .. K-1 the step index; tau rises from base_momentum towards 1);
  * batch statistics: the target's own running averages, updated by its train-mode passes
    (as in the reference implementation); only the online network is evaluated.
Both start as copies of the online network. Augmentations: symmetric until per-view
configs exist (BYOL's asymmetric blur/solarize go in `config.data.aug`, see configs/byol_*.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from sdr_jax import methods


def byol_loss(p1: jax.Array, p2: jax.Array, t1: jax.Array, t2: jax.Array) -> jax.Array:
    """Symmetric BYOL loss: the mean over the batch of |n(p1) - n(t2)|^2 + |n(p2) - n(t1)|^2,
    i.e. 4 - 2 cos(p1, t2) - 2 cos(p2, t1); the targets `t` are stop-gradient."""
    return ((2.0 + 2.0 * methods.negative_cosine(p1, t2))
            + (2.0 + 2.0 * methods.negative_cosine(p2, t1)))


def target_momentum(step: jax.Array | int, num_steps: int, base_momentum: float) -> jax.Array:
    """tau of step `step` (0-based): base_momentum at the start, -> 1 at the end (cosine)."""
    progress = jnp.minimum(jnp.asarray(step, jnp.float32), num_steps) / max(num_steps, 1)
    return 1.0 - (1.0 - base_momentum) * (jnp.cos(jnp.pi * progress) + 1.0) / 2.0


def ema(target, online, tau: jax.Array):
    """tau * target + (1 - tau) * online, leaf by leaf."""
    return jax.tree.map(lambda t, o: tau * t + (1.0 - tau) * o, target, online)


class Method(methods.SSLMethod):
    name, title = "byol", "BYOL"
    # BYOL trains every weight, the predictor included, on the one lr schedule: no module is
    # kept at the peak lr, whatever `optim.fix_pred_lr` says.
    predictors = ()

    @classmethod
    def default_config(cls):
        # 0.99: BYOL's setting for runs up to 300 epochs (0.996 for 1000 epochs).
        return {"base_momentum": 0.99}

    def init_state(self, variables):
        # Copies: the target must not share buffers with the online network (the state is
        # donated to every step).
        return jax.tree.map(jnp.copy, {"params": variables["params"],
                                       "batch_stats": variables.get("batch_stats", {})})

    def forward(self, model, params, batch_stats, method_state, view1, view2, path):
        out1, out2, batch_stats = methods.two_views(model, params, batch_stats, view1, view2, path)
        t1, t2, target_stats = methods.two_views(model, method_state["params"],
                                                 method_state["batch_stats"], view1, view2, path)
        loss = byol_loss(out1["p"], out2["p"], t1["z"], t2["z"])
        return loss, batch_stats, {**method_state, "batch_stats": target_stats}, (out1, out2)

    def after_update(self, method_state, params, step):
        tau = target_momentum(step, self.num_steps, self.config.base_momentum)
        return {**method_state, "params": ema(method_state["params"], params, tau)}

    def log_extras(self, step):
        return {"target_momentum": float(target_momentum(step - 1, self.num_steps,
                                                         self.config.base_momentum))}
