"""Old import paths that still resolve for one release, with a ``DeprecationWarning`` that
names the new one."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any


def alias(module: str, new: str, public: str | None = None) -> dict[str, Any]:
    """A whole module moved: warn once (at import), and return the new module's public names
    for the old module's namespace (``globals().update(alias(__name__, "new.path"))``);
    ``public``: the path to name in the warning, when ``new`` is private."""
    warnings.warn(f"{module} is deprecated and will be removed in the next release; import "
                  f"{public or new} instead", DeprecationWarning, stacklevel=3)
    target = importlib.import_module(new)
    names = getattr(target, "__all__", [n for n in vars(target) if not n.startswith("_")])
    return {"__all__": list(names), **{n: getattr(target, n) for n in names}}


def moved(module: str, name: str, to: Mapping[str, str]) -> Any:
    """A module ``__getattr__``: ``name`` now lives in ``to[name]``."""
    target = to.get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(f"{module}.{name} moved to {target}.{name}; import it from there "
                  "(the old path goes in the next release)", DeprecationWarning, stacklevel=3)
    return getattr(importlib.import_module(target), name)
