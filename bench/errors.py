"""Exceptions shared across stages, importable without torch (command lines catch them before loading it)."""


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf; the message names the epoch and step."""


class ConfigMismatch(RuntimeError):
    """A run folder holds a run with another configuration."""


class OutOfMemory(RuntimeError):
    """CUDA out of memory even at the smallest micro-batch allowed."""


class StorageError(RuntimeError):
    """A study storage that cannot be used as given (e.g. a study database left where an older version kept it)."""
