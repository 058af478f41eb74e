"""Connector discovery through the ``streamflow.connectors`` entry-point group.

Built-ins are registered exactly like a third party's, and nothing is imported until a
pipeline names it, so importing ``streamflow`` never imports a connector's dependencies.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

from pydantic import ValidationError

from streamflow.errors import ConnectorError as ConnectorError  # re-exported by the SDK

from ._api import ConnectorSpec, Sink, Source

GROUP = "streamflow.connectors"
Kind = Literal["source", "sink"]


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def known_connectors() -> list[str]:
    return sorted(_entry_points())


def distribution_of(name: str) -> tuple[str, str]:
    """(package, version) that registered connector ``name``."""
    dist = _entry_points()[name].dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def load_spec(name: str) -> ConnectorSpec:
    eps = _entry_points()
    if name not in eps:
        raise ConnectorError(
            f"unknown connector {name!r}; known connectors: {', '.join(sorted(eps)) or 'none'}. "
            "A third-party connector must be installed (pip install <its package>) so that it "
            f"registers in the {GROUP!r} entry-point group."
        )
    ep = eps[name]
    try:
        spec = ep.load()
    except ImportError as e:
        raise ConnectorError(
            f"connector {name!r} ({ep.value}) cannot be imported: {e}. "
            f"Install its extra: pip install 'streamflow[{name}]' or the package providing it."
        ) from e
    if not isinstance(spec, ConnectorSpec):
        raise ConnectorError(f"entry point {name!r} ({ep.value}) is not a ConnectorSpec")
    return spec


def build(name: str, kind: Kind, config: dict[str, Any]) -> Source | Sink:
    """Instantiate connector ``name`` as a ``kind`` with validated config, or say what is wrong."""
    spec = load_spec(name)
    cls = spec.source if kind == "source" else spec.sink
    model = spec.source_config if kind == "source" else spec.sink_config
    if cls is None or model is None:
        raise ConnectorError(f"connector {name!r} has no {kind}")
    try:
        cfg = model.model_validate(config)
    except ValidationError as e:
        problems = "; ".join(
            f"setting {'.'.join(str(p) for p in err['loc']) or '<config>'!r}: {err['msg']}"
            for err in e.errors(include_url=False)
        )
        fields = ", ".join(model.model_fields)
        raise ConnectorError(
            f"{kind} {name!r} is misconfigured: {problems} (its settings: {fields})"
        ) from e
    obj = cls(cfg)
    if not isinstance(obj, Source if kind == "source" else Sink):
        raise ConnectorError(f"{kind} {name!r} does not implement the {kind} protocol")
    return obj


def build_source(name: str, config: dict[str, Any]) -> Source:
    src = build(name, "source", config)
    assert isinstance(src, Source)
    return src


def build_sink(name: str, config: dict[str, Any]) -> Sink:
    snk = build(name, "sink", config)
    assert isinstance(snk, Sink)
    return snk
