"""What every launch script does the same way: multi-host set-up and one-line errors."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, NoReturn

import jax
from absl import flags, logging

from sdr_jax.core.errors import SDRError, StoppedBySignal

_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def init_distributed() -> None:
    """Initialises jax.distributed when asked to; a single process needs nothing.

    Also keeps the libraries' INFO chatter (orbax, TFDS) out of the progress lines unless
    --verbosity was given.
    """
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    # Reuse compiled programs across runs (restarts, route after train); JAX_COMPILATION_CACHE_DIR
    # overrides the place, an empty value turns it off.
    cache_dir = os.environ.get("JAX_COMPILATION_CACHE_DIR",
                               os.path.join(os.path.expanduser("~"), ".cache", "sdr_jax", "xla"))
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
    if _COORDINATOR.value is not None or _DISTRIBUTED.value:
        # Cross-process collectives on CPU hosts (no effect on GPU/TPU backends).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def run_or_fail(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs fn; a problem with the user's input (an `SDRError`: config, files, data, checkpoints)
    becomes one line on stderr and exit code 1; a run stopped by SIGTERM/SIGINT (checkpoint
    saved) one line and exit code 128 + the signal's number. Anything else is a bug in the code
    and keeps its traceback (a plain ValueError or KeyError is not turned into a message)."""
    try:
        return fn(*args, **kwargs)
    except StoppedBySignal as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except SDRError as e:
        fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
