"""Structured logs: one JSON object per line, carrying the trace and span of the code that
logged it, so a log line leads to its trace in Jaeger and back."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson
from opentelemetry import trace

from streamflow.model import withheld

_STD = set(vars(logging.makeLogRecord({})))


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message``, sensitive values withheld (see ``withheld``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return withheld(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line. A record logged while the engine handles records with
    sensitive fields (a stage function's own logging included) has their values withheld."""

    def format(self, record: logging.LogRecord) -> str:
        return withheld(self._json(record))

    def _json(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"] = f"{ctx.trace_id:032x}"
            out["span_id"] = f"{ctx.span_id:016x}"
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        out.update({k: v for k, v in vars(record).items()
                    if k not in _STD and not k.startswith("_")})
        return orjson.dumps(out, default=str).decode()


def configure_logging(fmt: str = "auto", level: int = logging.WARNING) -> None:
    """``json`` for machines, ``text`` for people; ``auto`` picks text on a terminal."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
