"""An alert (a gate held or released a partition, a barrier missed its deadline) and the
interface of where alerts go; the delivery itself lives in ``streamflow.gates``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

AlertKind = Literal["gate-held", "gate-released", "deadline"]


@dataclass(frozen=True, slots=True)
class Alert:
    kind: AlertKind
    pipeline: str
    stage: str
    partition: str
    run_id: str
    summary: str  # one human line
    checks: list[dict[str, Any]] = field(default_factory=list)  # CheckResult.to_json() dicts
    at_ms: int = 0
    trace_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "pipeline": self.pipeline, "stage": self.stage,
                "partition": self.partition, "run_id": self.run_id, "summary": self.summary,
                "checks": [dict(c) for c in self.checks], "at_ms": self.at_ms,
                "trace_id": self.trace_id, "dedupe_key": self.dedupe_key}

    @property
    def dedupe_key(self) -> str:
        """Same kind, stage, partition and run: same key, so receivers dedupe retried sends."""
        h = hashlib.blake2b(digest_size=16)
        for part in (self.kind, self.stage, self.partition, self.run_id):
            h.update(part.encode() + b"\x00")  # a separator: ("a", "bc") != ("ab", "c")
        return h.hexdigest()


class AlertSink(Protocol):
    name: str

    async def send(self, alert: Alert) -> None: ...  # may raise; the Alerter handles it

    async def close(self) -> None: ...
