"""Small durable-file helpers shared by connectors (and offered to connector authors)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(final: Path, body: bytes, tmp: Path | None = None) -> None:
    """Replace ``final`` with ``body`` so that a reader (or a crash) never sees half a file:
    write a temp file beside it, fsync, then rename over it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or final.with_name(final.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
