"""What lives on compacted topics: the changelog store behind barrier, window and hold
state, the run ledger, and the contracts registry.

May import ``streamflow.transports`` and ``streamflow.model``.
"""

from ._changelog import StateStore
from ._contracts import check_contracts, compare, signature
from ._ledger import (
    LEDGER_VERSION,
    LedgerBatch,
    compact_inputs,
    fired_of,
    fold,
    fold_raw,
    record_message,
    run_entry,
)

__all__ = [
    "LEDGER_VERSION",
    "LedgerBatch",
    "StateStore",
    "check_contracts",
    "compact_inputs",
    "compare",
    "fired_of",
    "fold",
    "fold_raw",
    "record_message",
    "run_entry",
    "signature",
]
