"""Errors that reach the user as one clear line (launch scripts print them and exit 1)."""


class SDRError(Exception):
    """Base class: a problem with the user's input (config, files, checkpoints, names)."""


class ConfigError(SDRError, ValueError):
    """A config value that cannot work (a ValueError too: the value is wrong)."""


class CheckpointError(SDRError):
    """A checkpoint that does not belong to this run or cannot be restored."""


class NonFiniteLossError(SDRError):
    """Training produced a NaN or infinite loss."""


class StoppedBySignal(Exception):
    """SIGTERM or SIGINT stopped a run after its current step, with a checkpoint.

    Not an SDRError (nothing is wrong with the input): launch scripts print the message and exit
    with the shell's status for that signal, 128 + its number (143 for SIGTERM, 130 for SIGINT),
    so a scheduler sees a stopped, resumable run rather than a failure or a success.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
