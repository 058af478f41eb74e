"""Old import paths that still resolve for one release, with a ``DeprecationWarning`` that
names the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any


def moved(module: str, name: str, to: Mapping[str, str]) -> Any:
    """A module ``__getattr__``: ``name`` now lives in ``to[name]``."""
    target = to.get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} moved to {target}.{name}; import it from there "
                  "(the old path goes in the next release)", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(target), name)
