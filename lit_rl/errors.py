"""Errors that the command line turns into one clear message instead of a traceback."""


class ConfigError(ValueError):
    """A setting, file or checkpoint that cannot work. The message names the key and the fix."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; training stops before any optimizer step is taken with it."""
