"""The training loop shared by SimSiam and SDR: logging, NaN checks, checkpoints, monitors.

Metrics stay on device and are merged asynchronously; the host reads them only on log and
checkpoint steps, so a step never waits for the previous one.

A checkpoint is written only from a state verified finite: the metrics of a step are computed
before its update, so a finite loss says nothing about the params the update produced (a huge lr
makes them inf in one step). One on-device reduction over the whole state, fetched only when a
checkpoint is due, keeps a non-finite state off the disk.
"""
from __future__ import annotations

import dataclasses
import signal
import threading
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
from ml_collections import ConfigDict

from sdr_jax.core.errors import NonFiniteLossError, StoppedBySignal
from sdr_jax.train import checkpoint as checkpoint_lib
from sdr_jax.train import reporting
from sdr_jax.train.checkpoint import Checkpointer


@dataclasses.dataclass
class LoopResult:
    state: Any
    finished: bool  # False when stopped early (max_steps_per_run or preemption) with a checkpoint


def _last_verified(checkpointer: Checkpointer) -> str:
    last = checkpointer.latest_step()
    if last is None:
        return "no checkpoint was written; rerun with a lower optim.base_lr or check the data."
    return (f"the last verified checkpoint (step {last}) is kept; rerun with a lower "
            f"--config.optim.base_lr and --config.train.allow_config_change=True to resume from "
            f"it (or a new --workdir to start over), or check the data.")


def check_finite(metrics: Mapping[str, float], step: int, checkpointer: Checkpointer) -> None:
    if all(np.isfinite(v) for v in metrics.values()):
        return
    bad = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if not np.isfinite(v))
    raise NonFiniteLossError(f"non-finite training metrics by step {step} ({bad}); "
                             f"{_last_verified(checkpointer)}")


def check_state_finite(state: Any, step: int, checkpointer: Checkpointer) -> None:
    bad = checkpoint_lib.non_finite_parts(state)
    if bad:
        raise NonFiniteLossError(f"non-finite training state after step {step} (in "
                                 f"{', '.join(bad)}; not saved); {_last_verified(checkpointer)}")


class StopOnSignals:
    """While active, SIGTERM and SIGINT ask the loop to stop after the current step (with a
    checkpoint) instead of killing the process and losing every step since the last one.

    Only single-process runs: on several hosts a signal reaches one process, and stopping it
    alone would hang the others in a collective (Orbax's preemption sync covers multi-host).
    A second signal while stopping takes the default action (kill / KeyboardInterrupt).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def _handle(self, signum, frame):
        del frame
        self.received = signum
        signal.signal(signum, self._previous[signum])

    def __enter__(self) -> "StopOnSignals":
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def run(*, state: Any, first_step: int, num_steps: int, train_cfg: ConfigDict,
        batches: Iterator, step_fn: Callable[[Any, Any], tuple[Any, Any]],
        data_state: Callable[[], Any],
        checkpointer: Checkpointer, writer: reporting.MetricWriter,
        log_extras: Callable[[int], Mapping[str, float]] = lambda step: {},
        monitor: Callable[[Any, int], Mapping[str, float]] | None = None) -> LoopResult:
    """Runs steps first_step+1..num_steps.

    Step `step` takes the next batch of `batches`: `step_fn(state, batch)` runs the jitted step,
    returning the new state and a clu metrics Collection; `data_state()` is the input pipeline's
    state after the last batch taken;
    `monitor(state, step)` (e.g. kNN accuracies) runs every `train_cfg.knn_every` steps.
    """
    is_lead = jax.process_index() == 0
    progress = reporting.Progress(first_step, num_steps)
    accumulated = None
    with StopOnSignals() as signals:
        for step in range(first_step + 1, num_steps + 1):
            state, metrics = step_fn(state, next(batches))
            accumulated = metrics if accumulated is None else accumulated.merge(metrics)
            is_last = step == num_steps
            pause = 0 < train_cfg.max_steps_per_run <= step - first_step
            preempted = checkpointer.reached_preemption(step)
            signalled = signals.received
            should_log = step % train_cfg.log_every == 0 or is_last
            should_save = (step % train_cfg.checkpoint_every == 0 or is_last or pause or preempted
                           or signalled is not None)
            if should_log or should_save:
                values = {k: float(v) for k, v in accumulated.compute().items()}
                accumulated = None
                check_finite(values, step, checkpointer)  # before anything bad can be saved
                if should_log:
                    values.update(log_extras(step))
                    values.update(progress.update(step))
                    writer.write_scalars(step, values)
                    if is_lead:
                        print(reporting.format_metrics(step, num_steps, values), flush=True)
            if should_save:
                check_state_finite(state, step, checkpointer)
                checkpointer.save(step, state, data_state(), force=True)
            if signalled is not None:
                checkpointer.wait_until_finished()
                name = signal.Signals(signalled).name
                raise StoppedBySignal(f"Stopped at step {step} by {name}; checkpoint saved, run "
                                      f"the same command again to resume.", signalled)
            if pause or preempted:
                why = "preempted" if preempted else "max_steps_per_run"
                print(f"Stopped at step {step} ({why}); checkpoint saved, run again to resume.",
                      flush=True)
                return LoopResult(state, finished=False)
            if monitor and train_cfg.knn_every and step % train_cfg.knn_every == 0 and not is_last:
                results = monitor(state, step)
                writer.write_scalars(step, results)
                if is_lead:
                    print(f"step {step}: "
                          + ", ".join(f"{k} {v:.4g}" for k, v in results.items()), flush=True)
    return LoopResult(state, finished=True)
