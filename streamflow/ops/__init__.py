"""Operator queries and actions over the log: runs, dead letters and replay, the lineage tree,
trace lookup. The CLIs print what these return.

May import ``streamflow.backfill``, ``streamflow.state``, ``streamflow.transports``,
``streamflow.observability`` and ``streamflow.model``.
"""

from ._lineage import (
    DEFAULT_DEPTH,
    AssetNode,
    StageNode,
    build_tree,
    tree_json,
    what_exists,
)
from ._runs import (
    DeadLetterEntry,
    find,
    list_dead_letters,
    list_runs,
    replay,
    retry_run,
    whole_payload,
)
from ._trace import Found, find_record

__all__ = [
    "DEFAULT_DEPTH",
    "AssetNode",
    "DeadLetterEntry",
    "Found",
    "StageNode",
    "build_tree",
    "find",
    "find_record",
    "list_dead_letters",
    "list_runs",
    "replay",
    "retry_run",
    "tree_json",
    "what_exists",
    "whole_payload",
]
