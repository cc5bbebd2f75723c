"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class ThresherError(Exception):
    """A problem with the user's input, config or environment, stated in one line."""

    exit_code = 2


class ConfigError(ThresherError):
    pass


class InputError(ThresherError):
    pass


class OutputError(ThresherError):
    pass


class StageError(ThresherError):
    """A stage failed on data it was given (not a bug in thresher)."""
