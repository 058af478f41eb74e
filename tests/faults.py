"""Fault injection for tests: crashes placed on the product's neutral seams, never in product code.

Two ways to use it:

* As the entry point of a process under test, instead of ``python -m streamflow``::

      python -m tests.faults <streamflow CLI args...>

  reads the ``STREAMFLOW_FAULT_*`` variables below, puts the matching SIGKILL callbacks on the
  seams, then runs ``streamflow.cli.main`` with the same arguments and exits with its code. The
  process must be able to import ``tests`` (cwd = the repository root, or ``PYTHONPATH``);
  :func:`command` and :func:`subprocess_env` build both.

* In-process, as a pytest plugin (``-p tests.faults`` or ``pytest_plugins``): the ``faults``
  fixture adds callbacks to the seams and removes them after the test.

Faults:

``STREAMFLOW_FAULT_CRASH_BEFORE_COMMIT=N``
    SIGKILL the process at its Nth transaction commit that produced something, after the
    outputs were produced and before the commit, as a power cut would
    (seam: ``streamflow.transports._txn.BEFORE_COMMIT``).
``STREAMFLOW_FAULT_CATALOG_CRASH_BEFORE_COMMIT=N``
    SIGKILL a catalog projector at its Nth batch, after the batch's statements and before
    its commit (seam: ``streamflow.catalog.BEFORE_COMMIT``).
``STREAMFLOW_FAULT_BACKFILL_CRASH_AFTER=N``
    SIGKILL the backfill driver once N of the job's slices are done (a crash mid-backfill;
    seam: ``streamflow.backfill._driver.AFTER_SLICE``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from streamflow import catalog
from streamflow.backfill import _driver
from streamflow.transports import _txn

PREFIX = "STREAMFLOW_FAULT_"
CRASH_BEFORE_COMMIT = "STREAMFLOW_FAULT_CRASH_BEFORE_COMMIT"
BACKFILL_CRASH_AFTER = "STREAMFLOW_FAULT_BACKFILL_CRASH_AFTER"
CATALOG_CRASH_BEFORE_COMMIT = "STREAMFLOW_FAULT_CATALOG_CRASH_BEFORE_COMMIT"
ROOT = Path(__file__).resolve().parent.parent


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def crash_before_commit(nth: int, die: Callable[[], None] = _die) -> Callable[[int], None]:
    """A ``BEFORE_COMMIT`` callback: ``die`` at the ``nth`` commit that produced records."""
    count = 0

    def callback(produced: int) -> None:
        nonlocal count
        if produced == 0:
            return
        count += 1
        if count >= nth:
            die()

    return callback


def crash_after_slices(n: int, die: Callable[[], None] = _die) -> Callable[[int], None]:
    """An ``AFTER_SLICE`` callback: ``die`` once ``n`` slices of the job are done."""

    def callback(done: int) -> None:
        if done >= n:
            die()

    return callback


def _positive(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) <= 0:
        raise SystemExit(f"tests.faults: {name} must be a positive integer, not {raw!r}")
    return int(raw)


def install(env: Mapping[str, str] = os.environ) -> list[str]:
    """Put the callbacks asked for by ``env`` on the seams; returns the variables honoured."""
    installed = []
    if (nth := _positive(env, CRASH_BEFORE_COMMIT)) is not None:
        _txn.BEFORE_COMMIT.append(crash_before_commit(nth))
        installed.append(CRASH_BEFORE_COMMIT)
    if (nth := _positive(env, CATALOG_CRASH_BEFORE_COMMIT)) is not None:
        catalog.BEFORE_COMMIT.append(crash_before_commit(nth))
        installed.append(CATALOG_CRASH_BEFORE_COMMIT)
    if (n := _positive(env, BACKFILL_CRASH_AFTER)) is not None:
        _driver.AFTER_SLICE.append(crash_after_slices(n))
        installed.append(BACKFILL_CRASH_AFTER)
    return installed


def command(args: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The command line running the streamflow CLI with ``args``: ``python -m tests.faults``
    if ``env`` asks for a fault (or ``env`` is None), else plain ``python -m streamflow``."""
    wanted = env is None or any(k.startswith(PREFIX) for k in env)
    return [sys.executable, "-m", "tests.faults" if wanted else "streamflow", *args]


def subprocess_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with the repository root first on ``PYTHONPATH``, so ``tests`` is importable
    whatever the subprocess's working directory."""
    path = env.get("PYTHONPATH", "")
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), path) if p)}


def main(argv: Sequence[str] | None = None) -> int:
    from streamflow.cli import main as cli_main

    install()
    return cli_main(list(sys.argv[1:] if argv is None else argv))


class Faults:
    """The ``faults`` fixture: in-process callbacks on the seams, removed after the test."""

    def __init__(self) -> None:
        self._added: list[tuple[list[Callable[[int], None]], Callable[[int], None]]] = []

    def before_commit(self, callback: Callable[[int], None]) -> None:
        self._add(_txn.BEFORE_COMMIT, callback)

    def after_slice(self, callback: Callable[[int], None]) -> None:
        self._add(_driver.AFTER_SLICE, callback)

    def _add(self, seam: list[Callable[[int], None]], callback: Callable[[int], None]) -> None:
        seam.append(callback)
        self._added.append((seam, callback))

    def remove_all(self) -> None:
        for seam, callback in reversed(self._added):
            if callback in seam:
                seam.remove(callback)
        self._added.clear()


@pytest.fixture
def faults() -> Iterator[Faults]:
    f = Faults()
    yield f
    f.remove_all()


if __name__ == "__main__":
    raise SystemExit(main())
