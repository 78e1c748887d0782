"""Errors that reach the user as one clear line (launch scripts print them and exit 1)."""


class SDRError(Exception):
    """Base class: a problem with the user's input (config, files, checkpoints, names)."""


class ConfigError(SDRError):
    """A config value that cannot work."""


class CheckpointError(SDRError):
    """A checkpoint that does not belong to this run or cannot be restored."""


class NonFiniteLossError(SDRError):
    """Training produced a NaN or infinite loss."""
