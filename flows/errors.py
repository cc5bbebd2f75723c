"""Moved to thresher.schemas.errors (contracts live at the bottom layer); kept for one release."""

from thresher.schemas.errors import ConfigError, InputError, OutputError, StageError, ThresherError

__all__ = ["ConfigError", "InputError", "OutputError", "StageError", "ThresherError"]
