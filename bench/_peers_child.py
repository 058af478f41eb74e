"""The child process of the peers benchmark: ``python -m bench._peers_child SPEC_JSON``.

Runs one system on one workload until SIGTERM, alone in its process, so its CPU time and
memory are its own. The environment of the spec is applied before anything is imported, and
log records go to stderr (the parent's log file) with their level.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys

from ._peers_common import Spec

MODULES = {"streamflow": "_peers_sf", "aiokafka-raw": "_peers_raw", "faust": "_peers_faust",
           "quix": "_peers_quix"}


def main() -> None:
    spec = Spec.from_json(sys.argv[1])
    os.environ.update(spec.env)
    # Warnings and errors into the log with their level, so that the parent finds the ERROR
    # lines (a system that configures its own logging keeps its format).
    # BENCH_PEERS_LOG=INFO shows a system's own progress lines too (diagnosis only).
    level = logging.getLevelName(os.environ.get("BENCH_PEERS_LOG", "WARNING").upper())
    logging.basicConfig(level=level if isinstance(level, int) else logging.WARNING,
                        stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("BENCH_PEERS_GC") == "relaxed":
        # An experiment, never in the reported rows: how much does the cyclic GC cost?
        gc.set_threshold(100_000, 50, 100)
    mod = importlib.import_module(f"bench.{MODULES[spec.system]}")
    mod.main(spec)


if __name__ == "__main__":
    main()
