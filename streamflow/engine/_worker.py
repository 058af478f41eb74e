"""A worker: wires a pipeline to a transport, runs it, and drains before it stops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamflow.connectors import Sink, Source, build_sink, build_source
from streamflow.errors import ConfigError, PipelineError
from streamflow.gates.runtime import Alerter, Gatekeeper, alert_sinks_from_env
from streamflow.model import (
    OnEach,
    Pipeline,
    RunRecord,
    Settings,
    SinkSpec,
    SourceSpec,
    hold_topic,
    lane_topic,
    payloads_topic,
    replay_topic,
    runs_topic,
    state_topic,
)
from streamflow.observability import (
    HttpServer,
    Metrics,
    Probe,
    Tracing,
    configure_tracing,
    describe_process,
    port_holder,
    run_events,
)
from streamflow.state import (
    Checkpoints,
    TopicClaims,
    check_contracts,
    ensure_ledger,
    fired_of,
    input_count,
)
from streamflow.transports import Transport, make_transport

from ._context import Counters, Ctx, connector_context
from ._drain import drain, finish, wait_sources, wait_stop
from ._fired import RecentRuns
from ._ledger import Loaded, load_ledger
from ._sinks import SinkRunner
from ._sources import SourceRunner
from ._stage import StageRunner

log = logging.getLogger("streamflow.engine")


@dataclass
class RunSummary:
    pipeline: str
    transport: str
    records_in: int
    records_out: int
    dead_lettered: int
    runs: int
    retried: int = 0
    deduped: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    dead_letter_topic: str = ""
    drained: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "transport": self.transport,
            "records_in": self.records_in, "records_out": self.records_out,
            "dead_lettered": self.dead_lettered, "runs": self.runs, "retried": self.retried,
            "deduped": self.deduped, "outputs": self.outputs,
            "dead_letter_topic": self.dead_letter_topic, "drained": self.drained,
        }


class Worker:
    """Runs one pipeline until its sources are exhausted or it is asked to stop."""

    def __init__(
        self,
        pipeline: Pipeline,
        settings: Settings | None = None,
        transport: Transport | None = None,
        serve: bool = False,
        sources: bool = True,
    ) -> None:
        """``serve``: keep consuming after the sources ran dry, until ``request_stop`` (the
        ``streamflow worker`` mode, one of several processes sharing the partitions).
        ``sources=False``: only stages and sinks; sources read outside any consumer group,
        so with several workers one of them runs them."""
        pipeline.validate()
        self.serve = serve
        self.run_sources = sources
        self.pipeline = pipeline
        self.settings = settings or Settings.load()
        self.transport = transport or make_transport(self.settings)
        self.counters = Counters()
        self.metrics = Metrics(pipeline.name)
        self.probe = Probe(pipeline.name, self.transport.name, self.metrics,
                           lag_ttl_s=self.settings.status_lag_ttl_s)
        self.spans_dropped = 0
        """Spans the trace exporter could not deliver, known after ``run``."""
        self.http_port: int | None = None
        """The bound HTTP port once ``run`` started (``Settings.http_port`` 0 picks one)."""
        self.claims = TopicClaims(self.transport, self.settings.namespace, pipeline.name)
        """Claims the sources make (the webhook's idempotency keys), on this transport."""
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        """Stop reading sources, finish what is in flight, then return (Ctrl-C, SIGTERM)."""
        self._stop.set()

    async def run(self) -> RunSummary:
        s, p = self.settings, self.pipeline
        setup = configure_tracing(default_service=f"streamflow-{p.name}")
        system = self.transport.messaging_system
        tracing = setup.tracing(system) if setup is not None else Tracing(None, system)
        alerter = Alerter([*alert_sinks_from_env(os.environ), *p.alerts])
        ctx = Ctx(transport=self.transport, tracing=tracing, counters=self.counters,
                  dlq_topic=s.dead_letter_topic, poll_batch=s.poll_batch, namespace=s.namespace,
                  metrics=self.metrics, commit_interval_s=s.commit_interval_s, alerter=alerter,
                  pipeline=p.name, max_record_bytes=s.max_record_bytes,
                  backfill_batch=s.backfill_batch,
                  lineage=run_events(s.lineage, s.namespace, p.name),
                  kafka_bootstrap=s.kafka_bootstrap,
                  checkpoints=Checkpoints.under(Path(s.state_dir), s.namespace,
                                                s.kafka_bootstrap)
                  if s.state_checkpoints else None)
        sources, sinks = self._build_connectors()
        http = await self._serve_http()
        gc_tuned: tuple[int, int, int] | None = None
        consumers: list[StageRunner | SinkRunner] = []
        self.probe.consumers = consumers
        tasks: list[asyncio.Task[None]] = self.probe.tasks
        drained = True
        try:
            ledger = await self._prepare_topics(ctx)
            await self._setup_connectors(sources, sinks)
            self._add_consumers(consumers, ctx, alerter, ledger, sinks)
            del ledger  # consumers copied what they need: the fold may be large
            for cons in consumers:
                await cons.open()
            tasks += [asyncio.create_task(k.run(), name=f"consumer:{k.group}") for k in consumers]
            src_tasks = [
                asyncio.create_task(SourceRunner(sp, src, ctx).run(), name=f"source:{sp.name}")
                for sp, src in sources
            ]
            self.probe.phase = "running"
            gc_tuned = _tune_gc() if s.tune_gc else None
            drained = await self._run_until_done(sources, consumers, tasks, src_tasks)
        finally:
            await self._shut_down(gc_tuned, consumers, tasks, sinks, alerter, ctx, http)
            if setup is not None:
                setup.shutdown()
                self.spans_dropped = setup.dropped
        c = self.counters
        return RunSummary(
            p.name, self.transport.name, c.records_in, c.records_out, c.dead_lettered, c.runs,
            c.retried, c.deduped, {skp.name: snk.location for skp, snk in sinks},
            s.dead_letter_topic, drained,
        )

    def _build_connectors(
        self,
    ) -> tuple[list[tuple[SourceSpec, Source]], list[tuple[SinkSpec, Sink]]]:
        """Build every connector first so a misconfigured one fails before anything runs."""
        p = self.pipeline
        sources = [
            (sp, build_source(sp.connector, sp.config) if isinstance(sp.connector, str)
             else sp.connector) for sp in p.sources if self.run_sources
        ]
        sinks = [
            (sp, build_sink(sp.connector, sp.config) if isinstance(sp.connector, str)
             else sp.connector) for sp in p.sinks
        ]
        return sources, sinks

    async def _prepare_topics(self, ctx: Ctx) -> Loaded:
        """Start the transport, create and check the topics; the run ledger as read."""
        s, p = self.settings, self.pipeline
        await self.transport.start()
        topics = [ctx.topic(a) for a in p.assets.values()] + [
            s.dead_letter_topic, payloads_topic(s.dead_letter_topic)]
        names = [st.name for st in p.stages] + [sk.name for sk in p.sinks]
        topics += [replay_topic(s.namespace, n) for n in names]
        compacted = [
            state_topic(s.namespace, st.name) for st in p.stages
            if not isinstance(st.trigger, OnEach)] + [
            hold_topic(s.namespace, st.name) for st in p.stages if st.checks]
        await self.transport.ensure_topics(topics, compacted=compacted)
        await ensure_ledger(self.transport, runs_topic(s.namespace), s.ledger_retention_s)
        await self._ensure_lanes(ctx)
        await self._check_copartitioned(ctx)
        for note in await check_contracts(self.transport, s.namespace, p.assets.values()):
            log.info("%s", note)
        return await load_ledger(self.transport, s, self.metrics,
                                 [st.name for st in p.stages if st.checks])

    async def _setup_connectors(self, sources: list[tuple[SourceSpec, Source]],
                                sinks: list[tuple[SinkSpec, Sink]]) -> None:
        s, p = self.settings, self.pipeline
        state = str(Path(s.state_dir) / s.namespace / p.name)
        for sp, src in sources:
            await src.setup(connector_context(sp.name, sp.asset, state, s.namespace, p.name,
                                              self.claims, s))
        for skp, snk in sinks:
            await snk.setup(
                connector_context(skp.name, skp.asset, state, s.namespace, p.name, settings=s))

    def _add_consumers(self, consumers: list[StageRunner | SinkRunner], ctx: Ctx,
                       alerter: Alerter, loaded: Loaded,
                       sinks: list[tuple[SinkSpec, Sink]]) -> None:
        """Both lanes of every stage, upstream first, then the sinks."""
        p, ledger = self.pipeline, loaded.runs
        for st in _topological(p):
            fired = RecentRuns(self.settings.dedupe_window_s, self.settings.dedupe_max_runs)
            fired.update(fired_of(ledger, st.name, int(
                (time.time() - fired.window_s) * 1000), fired.max_ids))
            fired.open = {r: at for r, at in loaded.open_at.items()
                          if ledger[r]["stage"] == st.name}
            keeper = None
            if st.checks:  # row-count history: input counts of earlier passing runs
                done = sorted((d for d in ledger.values()
                               if d["stage"] == st.name and d["status"] == "succeeded"),
                              key=lambda d: int(d["ended_ms"]))
                held = [RunRecord.model_validate(d) for d in ledger.values()
                        if d["stage"] == st.name and d["status"] == "held"]
                keeper = Gatekeeper(st, ctx.transport, ctx.namespace, ctx.metrics, alerter,
                                    p.name, [input_count(d) for d in done], held)
            consumers.append(StageRunner(st, ctx, fired, keeper=keeper))
            consumers.append(StageRunner(st, ctx, fired, retry_lane=True, keeper=keeper))
        consumers += [SinkRunner(skp, snk, ctx) for skp, snk in sinks]

    async def _run_until_done(
        self, sources: list[tuple[SourceSpec, Source]],
        consumers: list[StageRunner | SinkRunner], tasks: list[asyncio.Task[None]],
        src_tasks: list[asyncio.Task[None]],
    ) -> bool:
        """Run until the sources are done (or, serving, until a stop), then drain."""
        await wait_sources(self._stop, src_tasks, tasks)
        if self.serve:
            await wait_stop(self._stop, tasks)
        self.probe.phase = "draining"
        for _, src in sources:
            await src.stop()
        if self.serve:  # live input never drains: finish in-flight work, commit, leave
            return await finish(consumers, tasks, self.settings.drain_timeout_s)
        # Sources ran dry (not a stop request): deadlines due within the drain timeout
        # are waited for, so a batch run applies them instead of leaving them.
        return await drain(consumers, tasks, self.settings.drain_timeout_s,
                           wait_deadlines=not self._stop.is_set())

    async def _shut_down(
        self, gc_tuned: tuple[int, int, int] | None, consumers: list[StageRunner | SinkRunner],
        tasks: list[asyncio.Task[None]], sinks: list[tuple[SinkSpec, Sink]], alerter: Alerter,
        ctx: Ctx, http: HttpServer | None,
    ) -> None:
        if gc_tuned is not None:
            gc.set_threshold(*gc_tuned)
            gc.unfreeze()
        self.probe.phase = "stopped"
        for cons in consumers:
            cons.stop()
        if tasks:
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                    log.error("consumer failed: %r", r)
        for _, snk in sinks:
            with contextlib.suppress(Exception):
                await snk.stop()
        await alerter.close()
        if ctx.lineage is not None:
            await asyncio.to_thread(ctx.lineage.close)
        with contextlib.suppress(Exception):
            await self.claims.close()
        await self.transport.close()
        if http is not None:
            await http.close()
        self.metrics.shutdown()

    async def _serve_http(self) -> HttpServer | None:
        s = self.settings
        if s.http_port is None:
            return None
        server = HttpServer(self.probe.routes(), s.http_host, s.http_port, token=s.http_token,
                            open_paths=Probe.open_paths)
        try:
            self.http_port = await server.start()
        except OSError as e:
            holder = port_holder(s.http_port) if s.http_port else None
            who = f" (held by {describe_process(holder)})" if holder else ""
            raise ConfigError(
                f"cannot serve /healthz, /readyz and /metrics on {s.http_host}:{s.http_port}: "
                f"{e.strerror or e}{who}. Pick another "
                "port with --http-port (0: any free one) or STREAMFLOW_HTTP_PORT, or turn it "
                "off with STREAMFLOW_HTTP_PORT=off") from e
        guarded = " (/metrics and /status need the bearer token)" if s.http_token else ""
        log.info("worker HTTP on http://%s:%d (/healthz /readyz /metrics /status)%s",
                 s.http_host, self.http_port, guarded)
        if s.http_token is None and s.http_host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("worker HTTP listens on %s without a token: whoever reaches it reads "
                        "/status and /metrics; set STREAMFLOW_HTTP_TOKEN", s.http_host)
        return server

    async def _ensure_lanes(self, ctx: Ctx) -> None:
        """Each stage input's backfill lane, with as many partitions as its live topic."""
        inputs = {a.name: a for st in self.pipeline.stages for a in st.inputs}
        counts = {lane_topic(ctx.namespace, name): await self.transport.partition_count(
            ctx.topic(a)) for name, a in inputs.items()}
        await self.transport.ensure_topics(list(counts), partitions=counts)

    async def _check_copartitioned(self, ctx: Ctx) -> None:
        """A barrier needs partition n of each input (and of its state) on one worker."""
        for st in self.pipeline.stages:
            # A backfill lane's partition n must hold the keys of live partition n: the same
            # worker then decides both (the ledger's dedupe is in its memory).
            topics = [ctx.topic(a) for a in st.inputs]
            topics += [lane_topic(ctx.namespace, a.name) for a in st.inputs]
            if not isinstance(st.trigger, OnEach):
                topics.append(state_topic(ctx.namespace, st.name))
            if st.checks:
                topics.append(hold_topic(ctx.namespace, st.name))
            counts = {t: await self.transport.partition_count(t) for t in topics}
            if len(set(counts.values())) > 1:
                shown = ", ".join(f"{t}: {n}" for t, n in counts.items())
                raise PipelineError(
                    f"stage {st.name!r} joins inputs by partition key, so its topics need the "
                    f"same partition count; they have {shown}. Recreate them with "
                    f"--partitions {max(counts.values())} (or the same count everywhere)")


def _tune_gc() -> tuple[int, int, int]:
    """Per-record objects rarely form cycles, yet allocating them triggers the cyclic
    collector every 700 allocations, and each pass walks the long-lived start-up objects too
    (py-spy: 11% of a map stage's samples). Freeze those and collect young objects a hundred
    times less often; reference counting still frees nearly everything at once."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(70_000, 20, 50)
    return before


def _topological(p: Pipeline) -> list[Any]:
    """Stages ordered so that every producer comes before its consumers."""
    produced_by = {st.output.name: st for st in p.stages if st.output is not None}
    order: list[Any] = []
    seen: set[str] = set()

    def visit(st: Any) -> None:
        if st.name in seen:
            return
        seen.add(st.name)
        for a in st.inputs:
            if a.name in produced_by:
                visit(produced_by[a.name])
        order.append(st)

    for st in p.stages:
        visit(st)
    return order


async def run_pipeline(pipeline: Pipeline, settings: Settings | None = None) -> RunSummary:
    """Run ``pipeline`` until its sources are exhausted, then drain; the embedded default."""
    return await Worker(pipeline, settings).run()
