"""Every topic name StreamFlow derives, in one place: a namespace keeps deployments (or tests)
apart on one broker."""

from __future__ import annotations

import re

DEFAULT_NAMESPACE = "sf"


def asset_topic(namespace: str, asset: str) -> str:
    return f"{namespace}.{asset}"


def lane_topic(namespace: str, asset: str) -> str:
    """Where a backfill replays ``asset``: beside its live topic, read by the same consumer
    group (so the same worker owns partition n of both) but only when live work is done."""
    return f"{namespace}.backfill.{asset}"


def replay_topic(namespace: str, consumer: str) -> str:
    """Where a stage's retries and a stage's or sink's replayed dead letters go."""
    return f"{namespace}.retry.{consumer}"


def hold_topic(namespace: str, stage: str) -> str:
    return f"{namespace}.holds.{stage}"


def jobs_topic(namespace: str) -> str:
    return f"{namespace}.backfills"


def contracts_topic(namespace: str) -> str:
    return f"{namespace}.contracts"


def runs_topic(namespace: str) -> str:
    """The ledger's compacted part: runs that may still need someone (retrying, dead-lettered,
    held, parked), kept until resolved."""
    return f"{namespace}.runs"


def done_runs_topic(namespace: str) -> str:
    """The ledger's time-retained part: runs that need nothing more (succeeded, skipped,
    released), kept for ``ledger_retention_s``."""
    return f"{namespace}.runs.done"


def state_topic(namespace: str, stage: str) -> str:
    return f"{namespace}.state.{stage}"


def claims_topic(namespace: str, pipeline: str, table: str) -> str:
    """A connector's claims (the webhook's idempotency keys), shared by the pipeline's workers:
    compacted, and retained for the table's retention."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"{pipeline}.{table}")
    return f"{namespace}.claims.{name}"


def dead_letter_topic(namespace: str) -> str:
    return f"{namespace}.dead-letters"


def stage_group(namespace: str, stage: str) -> str:
    return f"{namespace}.stage.{stage}"


def sink_group(namespace: str, sink: str) -> str:
    return f"{namespace}.sink.{sink}"
