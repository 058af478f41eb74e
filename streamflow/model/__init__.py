"""The pure model: assets, arrivals, headers, topic names, runs and run ids, dead letters,
the pipeline declaration, trigger conditions, checks, retry policy and settings.

No I/O and no clients: it may import the connector SDK's types and ``streamflow.errors``
only, never aiokafka, aiosqlite or the OpenTelemetry SDK (import-linter enforces it).
"""

from ._alerts import Alert, AlertKind, AlertSink
from ._arrivals import Arrival, DeadLetter, arrival_headers
from ._assets import Asset, output_id, stable_id, stable_id3
from ._checks import MAX_VALUES, Check, CheckResult, passed, run_checks
from ._deadletters import dead_letter_message, describe_validation, error_info
from ._headers import (
    H_ARRIVAL_ID,
    H_ASSET,
    H_ATTEMPT,
    H_BACKFILL,
    H_BACKFILL_STAGES,
    H_EVENT_TIME,
    H_MODE,
    H_PARTITION,
    H_PLANNED,
    H_REPLAY,
    H_RERUN,
    H_RETRY_AT,
    H_TRACEPARENT,
    H_VERSION,
    DeadLetterKind,
    Mode,
    header_int,
    mode_of,
)
from ._messages import Message, OutMessage
from ._pipeline import Pipeline, SinkSpec, SourceSpec, StageSpec, load_pipeline
from ._retry import RetryPolicy
from ._runs import FINAL, PlannedRun, RunInput, RunRecord, RunStatus, run_id_of
from ._settings import Settings
from ._sources import check_record, origin_text, reject_id, source_arrival, source_arrival_id
from ._topics import (
    asset_topic,
    contracts_topic,
    done_runs_topic,
    hold_topic,
    jobs_topic,
    lane_topic,
    replay_topic,
    runs_topic,
    sink_group,
    stage_group,
    state_topic,
)
from ._triggers import AllOf, AnyOf, DeadlinePolicy, Inputs, OnEach, Window, WindowRecords

__all__ = [
    "FINAL",
    "H_ARRIVAL_ID",
    "H_ASSET",
    "H_ATTEMPT",
    "H_BACKFILL",
    "H_BACKFILL_STAGES",
    "H_EVENT_TIME",
    "H_MODE",
    "H_PARTITION",
    "H_PLANNED",
    "H_REPLAY",
    "H_RERUN",
    "H_RETRY_AT",
    "H_TRACEPARENT",
    "H_VERSION",
    "MAX_VALUES",
    "Alert",
    "AlertKind",
    "AlertSink",
    "AllOf",
    "AnyOf",
    "Arrival",
    "Asset",
    "Check",
    "CheckResult",
    "DeadLetter",
    "DeadLetterKind",
    "DeadlinePolicy",
    "Inputs",
    "Message",
    "Mode",
    "OnEach",
    "OutMessage",
    "Pipeline",
    "PlannedRun",
    "RetryPolicy",
    "RunInput",
    "RunRecord",
    "RunStatus",
    "Settings",
    "SinkSpec",
    "SourceSpec",
    "StageSpec",
    "Window",
    "WindowRecords",
    "arrival_headers",
    "asset_topic",
    "check_record",
    "contracts_topic",
    "dead_letter_message",
    "describe_validation",
    "done_runs_topic",
    "error_info",
    "header_int",
    "hold_topic",
    "jobs_topic",
    "lane_topic",
    "load_pipeline",
    "mode_of",
    "origin_text",
    "output_id",
    "passed",
    "reject_id",
    "replay_topic",
    "run_checks",
    "run_id_of",
    "runs_topic",
    "sink_group",
    "source_arrival",
    "source_arrival_id",
    "stable_id",
    "stable_id3",
    "stage_group",
    "state_topic",
]
