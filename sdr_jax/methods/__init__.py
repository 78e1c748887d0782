"""Floor 3: self-supervised methods (their losses and extra state) and distillation.

A method is a module `sdr_jax/methods/<name>.py` that defines `Method`, a subclass of
`SSLMethod`, chosen by `config.method.name` (as big_vision picks `models/<name>.py`):

  * `default_config()`: the fields of `config.method` (besides `name`) with their defaults; a
    config names the method and sets some fields (`config_base.use_method`, inert data), and
    `build` fills in the rest.
  * `init_state(variables)`: the method's extra training state, a pytree stored in
    `TrainState.method_state` (and so checkpointed with it); `{}` when it has none.
  * `forward(model, params, batch_stats, method_state, view1, view2, path)`: the loss of one
    path on two views of a batch (this device's share when run under `jax.shard_map`), with
    the new batch statistics, the new method state and the online network's outputs per view.
  * `after_update(method_state, params, step)`: the method state after the optimiser step
    `step` (0-based) produced `params` (BYOL: the EMA of the target network).
  * `predictors`: the top-level modules `optim.fix_pred_lr` keeps at the peak lr (SimSiam's
    predictor; none for BYOL); `name` (the module's) and `title` (how reports call it).

The pre-training step (`train/pretrain.py`) and the SDR step (`train/sdr.py`, D0 and sub-net
losses) are written once against this interface; distillation (`distill.py`) is not a method.
Adding a method: its module, its config file and its test (see README "Extending").
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from sdr_jax.core.errors import ConfigError
from sdr_jax.core.numerics import l2_normalize

# Modules of this package that are not methods.
_NOT_METHODS = frozenset({"distill"})


class SSLMethod:
    """The interface every method implements; see the module docstring."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # how reports name it (the pipeline's summary); default: name
    predictors: ClassVar[tuple[str, ...]] = ("predictor",)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.title = cls.title or cls.name

    def __init__(self, method_cfg: ConfigDict, num_steps: int):
        self.config = method_cfg
        self.num_steps = num_steps

    @classmethod
    def default_config(cls) -> dict[str, Any]:
        return {}

    def init_state(self, variables: dict) -> Any:
        return {}

    def forward(self, model, params, batch_stats, method_state, view1: jax.Array,
                view2: jax.Array, path: jax.Array
                ) -> tuple[jax.Array, Any, Any, tuple[dict, dict]]:
        """(loss, new batch_stats, new method_state, (outputs of view 1, outputs of view 2))."""
        raise NotImplementedError

    def after_update(self, method_state: Any, params: Any, step: jax.Array) -> Any:
        return method_state

    def log_extras(self, step: int) -> dict[str, float]:
        """Host-side values logged with the metrics of `step` (1-based), e.g. a schedule."""
        return {}


def names() -> list[str]:
    """The methods there are: every module of this package except distillation."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__)
                  if info.name not in _NOT_METHODS and not info.name.startswith("_"))


def method_class(name: str) -> type[SSLMethod]:
    if name not in names():
        raise ConfigError(f"method.name={name!r}; known methods: {', '.join(names())}.")
    return importlib.import_module(f"{__name__}.{name}").Method


def build(method_cfg: ConfigDict, num_steps: int) -> SSLMethod:
    """The method `method_cfg.name`, its fields over its defaults; a ConfigError names the known
    methods, or the method's fields."""
    cls = method_class(method_cfg.name)
    given = {k: v for k, v in method_cfg.items() if k != "name"}
    unknown = set(given) - set(cls.default_config())
    if unknown:
        raise ConfigError(f"method {method_cfg.name!r} has no field(s) {sorted(unknown)}; its "
                          f"fields: {sorted(cls.default_config())}.")
    return cls(ConfigDict({"name": cls.name, **cls.default_config(), **given}), num_steps)


# -- what every method uses ---------------------------------------------------------------------

def negative_cosine(p: jax.Array, z: jax.Array) -> jax.Array:
    """D(p, z) = -cos(p, stop_grad(z)), averaged over the batch (rows)."""
    if p.shape != z.shape:
        raise ValueError(f"negative_cosine needs p and z of the same shape, got {p.shape} and {z.shape}.")
    z = jax.lax.stop_gradient(z)
    return -jnp.mean(jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1))


def collapse_std(z: jax.Array, axis_name: str | None = None) -> jax.Array:
    """Std over the batch of the L2-normalised `z`, averaged over dims.

    SimSiam's collapse monitor: for healthy (spread out) outputs of dimension d
    it is about 1/sqrt(d); when all outputs collapse to one vector it goes to 0.
    With `axis_name` (inside `jax.shard_map`, equal batch shards) the std is over the global
    batch: the mean of per-device stds would depend on the device count (a std over 2 rows
    is not a std over 16), so the monitor would too.
    """
    x = l2_normalize(z)
    if axis_name is None:
        return jnp.mean(jnp.std(x, axis=0))
    # Two passes (mean, then squared deviations) as jnp.std does: no cancellation.
    mean = jax.lax.pmean(jnp.mean(x, axis=0), axis_name)
    var = jax.lax.pmean(jnp.mean(jnp.square(x - mean), axis=0), axis_name)
    return jnp.mean(jnp.sqrt(var))


def two_views(model, params, batch_stats, view1: jax.Array, view2: jax.Array, path: jax.Array
              ) -> tuple[dict, dict, Any]:
    """Both views through `model` in train mode, batch norm per view (as SimSiam and BYOL do):
    (outputs of view 1, outputs of view 2, batch_stats after view 1's update then view 2's)."""
    out1, new = model.apply({"params": params, "batch_stats": batch_stats}, view1, path,
                            train=True, mutable=["batch_stats"])
    out2, new = model.apply({"params": params, "batch_stats": new["batch_stats"]}, view2, path,
                            train=True, mutable=["batch_stats"])
    return out1, out2, new["batch_stats"]
