"""thresher against its peers on the same data, in one run, printing one JSON line per comparison."""

import os as _os
import sys as _sys

# `python -m benchmarks` runs from the checkout, whose folder Python puts first on sys.path; its
# kernels/, stages/, schemas/ and flows/ would shadow PyPI packages of those names (transformers
# >= 5.25 imports `kernels`). thresher imports them as thresher.*, and this package's modules
# resolve through its own __path__ once it is imported, so the checkout leaves sys.path here.
CHECKOUT = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))


def leave_sys_path() -> None:
    """Take the checkout off sys.path (tests/conftest.py calls it again after collection)."""
    _sys.path[:] = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != CHECKOUT]


leave_sys_path()
