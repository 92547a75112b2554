"""Typed errors. Anything raised as an `EgoscaleError` is a user-facing problem (bad input,
missing file, mismatched checkpoint): the CLI prints its message on one line and exits 2,
without a traceback. Everything else is a bug and keeps its traceback."""


class EgoscaleError(Exception):
    """Base class: a problem the user can fix; the message says what to change."""


class ConfigError(EgoscaleError):
    """A configuration value or combination is invalid."""


class ModelNotFoundError(EgoscaleError):
    """An unknown model name (the message lists close matches)."""


class CheckpointError(EgoscaleError):
    """A file that is not a checkpoint, is truncated, or does not fit the model."""


class DataError(EgoscaleError):
    """Input data is missing, empty or malformed."""
