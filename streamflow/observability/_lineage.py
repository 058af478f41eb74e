"""OpenLineage run events for stage runs, sent from a background thread.

A stage can finish thousands of runs a second on the event loop, so ``started``/``ended`` only
put a small tuple on a queue; one daemon thread builds the ``RunEvent`` objects and calls the
openlineage-python client, whose transports block (a file opened per event, an HTTP POST with
retries). A lineage backend that is down or slow must never slow or stop the pipeline: the
queue is bounded (what does not fit is dropped and counted) and emit errors are logged at most
once a minute, never raised.

One OpenLineage run per attempt. The spec wants one START and one terminal event per run, and
Airflow's integration does the same (its run id includes the try number). Under one id for all
attempts, a consumer such as Marquez, which keys runs by id, would fold START, FAIL, START,
COMPLETE into one run whose state flips back and forth: its run history would no longer show
that the first attempts failed, nor why. With one run per attempt each appears in the job's
history with its own state, duration and error. Attempt 1 uses our run id itself as
the UUID (``streamflow runs show`` ids read across directly); attempt n > 1 uses
``uuid5(run id, n)``. The ``streamflow`` run facet carries our run id and the attempt, so every
attempt maps back to its ledger record.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.client import Event
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import RunFacet, error_message_run, job_type_job
from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport
from openlineage.client.transport.transport import Transport

from streamflow.errors import ConfigError
from streamflow.model import Mode, RunStatus, withheld

log = logging.getLogger("streamflow.lineage")

PRODUCER = "https://github.com/streamflow/streamflow"
FACET_SCHEMA = (f"{PRODUCER}/blob/main/spec/StreamflowRunFacet.json"
                "#/$defs/StreamflowRunFacet")
MAX_QUEUED = 100_000
ERROR_LOG_EVERY_S = 60.0
FORMS = ("file:PATH, http(s)://URL, console, or 'openlineage' (the OpenLineage client's own "
         "OPENLINEAGE_* / openlineage.yml configuration)")
# Attempts after the first get a uuid5 in this namespace (fixed: ids stay stable across
# releases and workers).
_RUN_NS = uuid.uuid5(uuid.NAMESPACE_URL, PRODUCER)
_HEX = frozenset("0123456789abcdefABCDEF")
# Ledger status -> how the attempt ended for OpenLineage (see ``Lineage.ended``).
END_STATE: dict[str, RunState] = {
    "succeeded": RunState.COMPLETE,
    "retrying": RunState.FAIL,
    "dead-lettered": RunState.FAIL,
    "held": RunState.FAIL,
    "skipped": RunState.ABORT,
    "parked": RunState.OTHER,
    "released": RunState.OTHER,
}
_DEFAULT_ERROR = {
    "retrying": "the attempt failed; it is retried",
    "dead-lettered": "the run failed and was dead-lettered",
    "held": "held by the stage's quality gate",
    "skipped": "skipped",
}

# (start?, stage, run_id, partition, attempt, mode, backfill, inputs, output, at_ms, status,
# error): a plain tuple is the cheapest thing to build on the event loop.
_Item = tuple[bool, str, str, str, int, str, str, tuple[str, ...], str | None, int, str,
              str | None]
_STOP: Any = object()


@attr.define
class StreamflowRunFacet(RunFacet):
    """What a StreamFlow run adds to OpenLineage's model: which ledger record this event is
    about, and whether it was live or part of a backfill."""

    run_id: str
    partition: str
    attempt: int
    mode: str
    status: str | None = attr.field(default=None)
    backfill: str | None = attr.field(default=None)

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA


class _Client(OpenLineageClient):
    def add_environment_facets(self, event: Event) -> Event:
        # The stock method scans all of os.environ on every event to find the variables the
        # config names; with none named (the usual case) that was 15% of an event's cost.
        if not self.config.facets.environment_variables:
            return event
        return super().add_environment_facets(event)


def ol_run_id(run_id: str, attempt: int) -> str:
    """The OpenLineage run id of one attempt (see the module docstring)."""
    if attempt <= 1:
        if len(run_id) == 32 and _HEX.issuperset(run_id):
            return str(uuid.UUID(hex=run_id))
        return str(uuid.uuid5(_RUN_NS, run_id))
    return str(uuid.uuid5(_RUN_NS, f"{run_id}/{attempt}"))


def _transport(target: str) -> tuple[Transport | None, str]:
    """The transport a ``STREAMFLOW_LINEAGE`` value names (None: the client's own config),
    and how to name it in logs (never an URL's credentials). A ``ConfigError`` (a ValueError)
    when malformed: the CLI prints it as a configuration error."""
    word = target.lower()
    if word == "openlineage":
        return None, "the OpenLineage client configuration"
    if word == "console":
        # The console transport logs each event at INFO; a worker logs WARNING and up.
        console = logging.getLogger("openlineage.client.transport.console")
        if console.level == logging.NOTSET:
            console.setLevel(logging.INFO)
        return ConsoleTransport(ConsoleConfig()), "the console"
    if word.startswith("file:"):
        path = target if word.startswith("file://") else target[len("file:"):]
        local = Path(urlsplit(path).path if path.startswith("file://") else path)
        if not local.name:
            raise ConfigError(f"STREAMFLOW_LINEAGE={target!r} names no file; accepted: {FORMS}")
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"STREAMFLOW_LINEAGE={target!r}: cannot create the directory "
                             f"of {local}: {e}") from e
        return FileTransport(FileConfig(log_file_path=path, append=True)), f"file {local}"
    if word.startswith(("http://", "https://")):
        parts = urlsplit(target)
        if not parts.hostname:
            raise ConfigError(f"STREAMFLOW_LINEAGE={target!r} names no host; accepted: {FORMS}")
        # A URL with a path is the full endpoint; a bare one gets the standard api/v1/lineage.
        config: dict[str, Any] = {"url": f"{parts.scheme}://{parts.netloc}/"}
        endpoint = parts.path.lstrip("/") + (f"?{parts.query}" if parts.query else "")
        if endpoint:
            config["endpoint"] = endpoint
        where = f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return HttpTransport(HttpConfig.from_dict(config)), where
    raise ConfigError(f"STREAMFLOW_LINEAGE={target!r} is not understood; accepted: {FORMS} "
                     "(leave it unset for no lineage events)")


class Lineage:
    """Sends an OpenLineage START when a stage run's attempt starts and one end event when it
    ends. Job ``streamflow://<namespace>`` / ``<pipeline>.<stage>``; datasets are assets, in the
    same namespace, so a stage's output and the next stage's input are one dataset and the runs
    connect into a graph."""

    def __init__(self, client: OpenLineageClient, namespace: str, pipeline: str,
                 where: str = "OpenLineage", max_queued: int = MAX_QUEUED) -> None:
        self.client = client
        self.namespace = f"streamflow://{namespace}"
        self.pipeline = pipeline
        self.where = where
        self.max_queued = max_queued
        self.emitted = 0
        self.failed = 0
        self.dropped = 0
        self._closed = False
        self._last_error_log = -ERROR_LOG_EVERY_S
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._job_facets = {"jobType": job_type_job.JobTypeJobFacet(
            # Each run is finite, with a start and an end: what BATCH means to consumers.
            processingType="BATCH", integration="STREAMFLOW", jobType="STAGE",
            producer=PRODUCER)}
        self._thread = threading.Thread(target=self._drain, name="streamflow-lineage",
                                         daemon=True)
        self._thread.start()

    @classmethod
    def from_target(cls, target: str | None, namespace: str, pipeline: str) -> Lineage | None:
        """The ``lineage`` setting (``STREAMFLOW_LINEAGE``) made a ``Lineage``; None if unset.
        ``OPENLINEAGE_DISABLED=true`` turns every form off, as the client does."""
        if target is None or not target.strip():
            return None
        transport, where = _transport(target.strip())
        client = _Client() if transport is None else _Client(transport=transport)
        return cls(client, namespace, pipeline, where)

    # -- on the event loop: enqueue only ----------------------------------------------------

    def _put(self, item: _Item) -> None:
        if self._closed:
            return
        if self._queue.qsize() >= self.max_queued:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("lineage: %d events are waiting to be sent to %s; dropping events "
                            "until it catches up (the count is logged at shutdown)",
                            self.max_queued, self.where)
            return
        self._queue.put(item)

    def started(self, *, stage: str, run_id: str, partition: str, attempt: int, mode: Mode,
                backfill: str, inputs: Sequence[str], output: str | None, at_ms: int) -> None:
        self._put((True, stage, run_id, partition, attempt, mode, backfill, tuple(inputs),
                   output, at_ms, "", None))

    def ended(self, *, stage: str, run_id: str, partition: str, attempt: int, mode: Mode,
              backfill: str, inputs: Sequence[str], output: str | None, at_ms: int,
              status: RunStatus, error: str | None) -> None:
        """The attempt's end, by its ledger status:

        - ``succeeded`` -> COMPLETE;
        - ``retrying`` (this attempt failed, the next is its own OpenLineage run),
          ``dead-lettered`` and ``held`` (its quality gate failed) -> FAIL;
        - ``skipped`` (it never ran) -> ABORT;
        - ``parked`` (waiting behind a held partition, it runs later) and ``released`` (a
          note on a held run that already ended) -> OTHER: the spec's event for metadata
          outside the run cycle, which ends nothing.

        FAIL and ABORT carry an ``errorMessage`` facet with ``error`` (or why, when None);
        every event's ``streamflow`` facet carries the exact ledger status."""
        self._put((False, stage, run_id, partition, attempt, mode, backfill, tuple(inputs),
                   output, at_ms, status, None if error is None else withheld(error)))

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds), then stop the thread."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        self._thread.join(timeout)
        left = self._queue.qsize()
        if self._thread.is_alive():
            log.warning("lineage: %s did not take the last events within %.1f s; about %d "
                        "were not sent", self.where, timeout, left)
        try:
            self.client.close(max(0.0, deadline - time.monotonic()))
        except Exception as e:  # a transport failing to close must not fail the shutdown
            log.warning("lineage: closing the transport to %s failed: %s", self.where, e)
        if self.dropped or self.failed:
            log.warning("lineage: %d event(s) sent to %s, %d failed, %d dropped (queue full)",
                        self.emitted, self.where, self.failed, self.dropped)

    # -- on the lineage thread ---------------------------------------------------------------

    def _drain(self) -> None:
        get = self._queue.get
        while True:
            item = get()
            if item is _STOP:
                return
            try:
                self.client.emit(self.event(item))
                self.emitted += 1
            except Exception as e:  # never raised: lineage must not stop the pipeline
                self.failed += 1
                now = time.monotonic()
                if now - self._last_error_log >= ERROR_LOG_EVERY_S:
                    self._last_error_log = now
                    log.warning("lineage: cannot send OpenLineage events to %s (%d failed so "
                                "far; logged at most once a minute): %s", self.where,
                                self.failed, e)

    def event(self, item: _Item) -> RunEvent:
        (start, stage, run_id, partition, attempt, mode, backfill, inputs, output, at_ms,
         status, error) = item
        state = RunState.START if start else END_STATE.get(status, RunState.OTHER)
        facets: dict[str, RunFacet] = {"streamflow": StreamflowRunFacet(
            run_id=run_id, partition=partition, attempt=attempt, mode=mode,
            status=status or None, backfill=backfill or None, producer=PRODUCER)}
        if state in (RunState.FAIL, RunState.ABORT):
            facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=error or _DEFAULT_ERROR.get(status, status), programmingLanguage="python",
                producer=PRODUCER)
        ns = self.namespace
        return RunEvent(
            eventType=state,
            eventTime=datetime.fromtimestamp(at_ms / 1000, UTC).isoformat(timespec="milliseconds"),
            run=Run(runId=ol_run_id(run_id, attempt), facets=facets),
            # A fresh dict per event: the client adds job facets (tags, source location) in place.
            job=Job(namespace=ns, name=f"{self.pipeline}.{stage}", facets=dict(self._job_facets)),
            inputs=[InputDataset(namespace=ns, name=a) for a in dict.fromkeys(inputs)],
            outputs=[OutputDataset(namespace=ns, name=output)] if output else [],
            producer=PRODUCER,
        )
