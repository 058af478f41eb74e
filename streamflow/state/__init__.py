"""What lives on compacted topics: the changelog store behind barrier, window and hold
state, the run ledger, the contracts registry, and connectors' claims.

May import ``streamflow.transports`` and ``streamflow.model``.
"""

from ._changelog import StateStore
from ._checkpoint import Checkpoints
from ._claims import ClaimTopic, TopicClaims
from ._contracts import check_contracts, compare, signature
from ._contracts import fold as fold_contracts
from ._ledger import (
    HISTORY,
    LEDGER_VERSION,
    SETTLED,
    LedgerBatch,
    close_runs,
    compact_inputs,
    done_of,
    ensure_ledger,
    fired_of,
    fold,
    fold_raw,
    fold_topic,
    input_count,
    merge,
    read_ledger,
    record_message,
    run_entry,
    settled_message,
    stale_batches,
    validated,
)

__all__ = [
    "HISTORY",
    "LEDGER_VERSION",
    "SETTLED",
    "Checkpoints",
    "ClaimTopic",
    "LedgerBatch",
    "StateStore",
    "TopicClaims",
    "check_contracts",
    "close_runs",
    "compact_inputs",
    "compare",
    "done_of",
    "ensure_ledger",
    "fired_of",
    "fold",
    "fold_contracts",
    "fold_raw",
    "fold_topic",
    "input_count",
    "merge",
    "read_ledger",
    "record_message",
    "run_entry",
    "settled_message",
    "signature",
    "stale_batches",
    "validated",
]
