"""Declaring a pipeline: assets, sources, stages and sinks. Declaration only; no I/O."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from pydantic import BaseModel

from streamflow.connectors import Sink, Source
from streamflow.errors import PipelineError

from ._alerts import AlertSink
from ._assets import Asset
from ._checks import Check
from ._retry import NO_RETRY, RetryPolicy
from ._triggers import AllOf, OnEach, Trigger, Window

StageResult: TypeAlias = BaseModel | dict[str, Any] | Iterable[BaseModel | dict[str, Any]] | None
StageFn: TypeAlias = Callable[..., StageResult | Awaitable[StageResult]]


@dataclass(frozen=True, slots=True)
class SourceSpec:
    name: str
    connector: str | Source
    asset: Asset[Any]
    config: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SinkSpec:
    name: str
    connector: str | Sink
    asset: Asset[Any]
    config: dict[str, Any]


def _label(connector: object) -> str:
    return connector if isinstance(connector, str) else type(connector).__name__.lower()


@dataclass(frozen=True, slots=True)
class StageSpec:
    """A transformation: called once per input arrival (the ``on each arrival`` trigger)."""

    name: str
    fn: StageFn
    inputs: tuple[Asset[Any], ...]
    output: Asset[Any] | None
    is_async: bool
    retry: RetryPolicy = NO_RETRY
    trigger: Trigger = field(default_factory=OnEach)
    checks: tuple[Check, ...] = ()
    """The quality gate on this stage's inputs (see ``streamflow.gates``)."""


@dataclass
class Pipeline:
    name: str
    sources: list[SourceSpec] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=list)
    sinks: list[SinkSpec] = field(default_factory=list)
    alerts: list[AlertSink] = field(default_factory=list)
    """Where gate and deadline alerts go besides the log (and ``STREAMFLOW_ALERT_WEBHOOK``)."""

    def _check_name(self, name: str) -> None:
        taken = {s.name for s in self.sources} | {s.name for s in self.stages}
        taken |= {s.name for s in self.sinks}
        if name in taken:
            raise PipelineError(f"pipeline {self.name!r}: the name {name!r} is used twice")

    def source(
        self, connector: str | Source, *, asset: Asset[Any], name: str | None = None,
        **config: Any,
    ) -> SourceSpec:
        """Read ``asset`` from ``connector``: an entry-point name (e.g. ``files``) built with
        ``config``, or a ready source object."""
        spec = SourceSpec(name or f"{_label(connector)}-{asset.name}", connector, asset, config)
        self._check_name(spec.name)
        self.sources.append(spec)
        return spec

    def sink(
        self, connector: str | Sink, *, asset: Asset[Any], name: str | None = None,
        **config: Any,
    ) -> SinkSpec:
        """Deliver ``asset`` to ``connector``: an entry-point name or a ready sink object."""
        spec = SinkSpec(name or f"{_label(connector)}-{asset.name}", connector, asset, config)
        self._check_name(spec.name)
        self.sinks.append(spec)
        return spec

    def stage(
        self,
        *,
        inputs: Sequence[Asset[Any]],
        output: Asset[Any] | None = None,
        name: str | None = None,
        retry: RetryPolicy = NO_RETRY,
        trigger: Trigger | None = None,
        checks: Sequence[Check] = (),
    ) -> Callable[[StageFn], StageFn]:
        """Decorate the stage function. It returns the output record(s): a model, a dict, a
        list of them, or None to drop it.

        With the default trigger (``OnEach``) it is called with each input record. With
        ``AllOf`` (a barrier per partition key) or ``AnyOf`` it is called with an ``Inputs``
        mapping of asset name to the latest record of each input for that partition.
        ``retry`` says how failures are retried before the input goes to dead letters.
        ``checks`` gate its inputs: a failing error-level check holds that partition key
        (see docs/gates.md)."""
        if not inputs:
            raise PipelineError("a stage needs at least one input asset")
        trig = trigger or OnEach()
        names = {a.name for a in inputs}
        required = {r if isinstance(r, str) else r.name
                    for r in (trig.required if isinstance(trig, AllOf) else ())}
        if not required <= names:
            raise PipelineError(
                f"AllOf(required=...) names {sorted(required - names)}, which are not "
                f"inputs of this stage (inputs: {sorted(names)})")
        batchy = isinstance(trig, Window)
        for c in checks:
            if c.batch_only and not batchy:
                raise PipelineError(
                    f"check {c.name} needs a batch of records; put it on a stage with a "
                    "Window trigger (a per-record stage checks one record at a time)")

        def deco(fn: StageFn) -> StageFn:
            spec = StageSpec(
                name or fn.__name__, fn, tuple(inputs), output,
                inspect.iscoroutinefunction(fn), retry, trig, tuple(checks),
            )
            self._check_name(spec.name)
            self.stages.append(spec)
            return fn

        return deco

    @property
    def assets(self) -> dict[str, Asset[Any]]:
        found: dict[str, Asset[Any]] = {}
        every = [s.asset for s in self.sources] + [s.asset for s in self.sinks]
        for st in self.stages:
            every.extend(st.inputs)
            if st.output is not None:
                every.append(st.output)
        for a in every:
            if a.name in found and found[a.name] != a:
                raise PipelineError(f"two different assets are named {a.name!r}")
            found[a.name] = a
        return found

    def validate(self) -> None:
        """Fail at start, not mid-stream: every consumed asset must have a producer."""
        produced = {s.asset.name for s in self.sources}
        produced |= {st.output.name for st in self.stages if st.output is not None}
        for st in self.stages:
            for a in st.inputs:
                if a.name not in produced:
                    raise PipelineError(
                        f"stage {st.name!r} reads asset {a.name!r}, which no source or stage "
                        "produces"
                    )
        for sk in self.sinks:
            if sk.asset.name not in produced:
                raise PipelineError(
                    f"sink {sk.name!r} reads asset {sk.asset.name!r}, which nothing produces"
                )
        if not self.sources:
            raise PipelineError(f"pipeline {self.name!r} has no source")


def load_pipeline(target: str) -> Pipeline:
    """Load ``module:attr`` or ``path/to/file.py:attr`` (attr defaults to ``pipeline``)."""
    mod_name, _, attr = target.partition(":")
    attr = attr or "pipeline"
    try:
        if mod_name.endswith(".py") or "/" in mod_name:
            path = Path(mod_name).resolve()
            if not path.is_file():
                raise PipelineError(f"no such file: {mod_name}")
            unique = f"_streamflow_user_{path.stem}_{abs(hash(path))}"
            spec = importlib.util.spec_from_file_location(unique, path)
            if spec is None or spec.loader is None:
                raise PipelineError(f"cannot import {mod_name}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ModuleNotFoundError as e:
        raise PipelineError(
            f"cannot import {mod_name!r}: {e}. Pass module:attr (on PYTHONPATH) or "
            "path/to/file.py:attr"
        ) from e
    obj = getattr(module, attr, None)
    if not isinstance(obj, Pipeline):
        raise PipelineError(f"{target}: {attr!r} is not a streamflow.Pipeline (got {obj!r})")
    return obj
