"""Prefect flows, the CLI, config and the Spark session: everything that ties the stages together."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("thresher")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+src"
