"""Defines the errors that the command line turns into one clear message instead of a traceback."""

from typing import Optional


class ConfigError(ValueError):
    """Reports a setting, file or checkpoint that cannot work. The message names the key and the fix."""

    last: Optional["ConfigError"] = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # jsonargparse re-raises errors from class constructors as its own ValueError that quotes the
        # message; remembering the original lets the CLI report it as it was raised.
        ConfigError.last = self


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or inf; training stops before any optimizer step is taken with it."""


class CollectorError(RuntimeError):
    """A collector process of overlapped collection failed, died or stopped sending rollouts."""


class PeerLostError(RuntimeError):
    """Another process of a distributed run died or stopped answering; this one stops instead of hanging."""


def user_error(err: BaseException) -> Optional[Exception]:
    """Returns the ConfigError, NonFiniteLossError, PeerLostError or CollectorError behind ``err``, if there is one."""

    seen = err
    while seen is not None:
        if isinstance(seen, (ConfigError, NonFiniteLossError, PeerLostError, CollectorError)):
            return seen
        seen = seen.__cause__ or seen.__context__
    last = ConfigError.last
    if last is not None and str(last) in str(err):
        return last
    return None
