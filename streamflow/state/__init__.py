"""What lives on compacted topics: the changelog store behind barrier, window and hold
state, the run ledger, and the contracts registry.

May import ``streamflow.transports`` and ``streamflow.model``.
"""

from ._changelog import StateStore
from ._contracts import check_contracts, compare, signature
from ._ledger import fired_of, fold, fold_raw, record_message

__all__ = [
    "StateStore",
    "check_contracts",
    "compare",
    "fired_of",
    "fold",
    "fold_raw",
    "record_message",
    "signature",
]
