"""The training loop's guarantees: only verified-finite states reach the disk; a signal stops
a run with a checkpoint it resumes from exactly."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import simsiam_mosaic
from sdr_jax.jobs import cli
from sdr_jax.core.errors import NonFiniteLossError, StoppedBySignal
from sdr_jax.train import checkpoint, pretrain
from tests import fixtures


def tiny_config(data_dir, **sections):
    config = simsiam_mosaic.get_config("tiny").unlock()
    config.data.data_dir = data_dir
    config.eval.knn_tasks = ()
    for key, value in sections.items():
        section, field = key.split("__")
        config[section][field] = value
    return config.lock()


def saved_steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def poison_params_at(monkeypatch, bad_step):
    """Step `bad_step` leaves inf params while its metrics (computed before the update) are
    finite: what one step with a huge lr does."""
    make_step_fn = pretrain.PretrainTrainer.make_step_fn

    def make(self):
        step_fn = make_step_fn(self)

        def poisoned(state, batch):
            state, metrics = step_fn(state, batch)
            if int(state.step) == bad_step:
                state = state.replace(params=jax.tree.map(lambda p: p * jnp.inf, state.params))
            return state, metrics
        return poisoned
    monkeypatch.setattr(pretrain.PretrainTrainer, "make_step_fn", make)


@pytest.mark.slow
def test_a_poisoned_state_never_reaches_disk_and_the_advised_rerun_resumes(
        small_mosaic_dir, tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    config = tiny_config(small_mosaic_dir, train__checkpoint_every=2)
    with monkeypatch.context() as patch:
        poison_params_at(patch, bad_step=4)  # a checkpoint (and log) step
        with pytest.raises(NonFiniteLossError,
                           match=r"params.*last verified checkpoint \(step 2\)") as e:
            pretrain.train_and_evaluate(config, workdir)
    assert saved_steps(workdir) == [2]
    _, variables, _ = checkpoint.load_run(workdir)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))

    # The advised rerun (a lower lr, the change allowed) resumes from step 2 and finishes.
    assert "--config.train.allow_config_change=True" in str(e.value)
    result = pretrain.train_and_evaluate(tiny_config(
        small_mosaic_dir, train__checkpoint_every=2, optim__base_lr=0.01,
        train__allow_config_change=True), workdir)
    assert result["finished"] and result["step"] == 6


def signal_at(monkeypatch, signal_step, signum):
    """The process receives `signum` while step `signal_step` runs."""
    make_step_fn = pretrain.PretrainTrainer.make_step_fn

    def make(self):
        step_fn = make_step_fn(self)

        def signalled(state, batch):
            if int(state.step) + 1 == signal_step:
                signal.raise_signal(signum)
            return step_fn(state, batch)
        return signalled
    monkeypatch.setattr(pretrain.PretrainTrainer, "make_step_fn", make)


def final_params(workdir):
    return jax.tree.leaves(checkpoint.load_run(workdir)[1])


@pytest.mark.slow
def test_sigterm_stops_after_the_step_with_a_checkpoint_and_resumes_bit_exact(
        small_mosaic_dir, tiny_simsiam_run, tmp_path, monkeypatch):
    config = tiny_config(small_mosaic_dir)  # checkpoints at 3 and 6: the signal comes at 4
    assert config == fixtures.tiny_simsiam_config(small_mosaic_dir)
    straight = tiny_simsiam_run  # the same config, uninterrupted (read only)

    stopped = str(tmp_path / "stopped")
    with monkeypatch.context() as patch:
        signal_at(patch, 4, signal.SIGTERM)
        with pytest.raises(StoppedBySignal, match="Stopped at step 4 by SIGTERM") as e:
            pretrain.train_and_evaluate(config, stopped)
    assert e.value.exit_code == 143
    assert saved_steps(stopped) == [3, 4]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop's handler is gone

    result = pretrain.train_and_evaluate(config, stopped)
    assert result["finished"] and result["step"] == 6
    for a, b in zip(final_params(stopped), final_params(straight), strict=True):
        np.testing.assert_array_equal(a, b)


def test_launch_scripts_exit_with_the_signal_status(capsys):
    def stopped():
        raise StoppedBySignal("Stopped at step 4 by SIGINT; checkpoint saved, ...", signal.SIGINT)
    with pytest.raises(SystemExit) as e:
        cli.run_or_fail(stopped)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "Stopped at step 4 by SIGINT; checkpoint saved, ..."
