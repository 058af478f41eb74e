"""A tiny pipeline for the stdout sink: JSON Lines files in, one JSON line per record out."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from streamflow import Asset, Pipeline

WORKDIR = Path(os.environ.get("ECHO_WORKDIR", ".streamflow/to-stdout"))


class Person(BaseModel):
    id: int
    name: str


people = Asset("people", Person, key="id")

pipeline = Pipeline("to-stdout")
pipeline.source("files", asset=people, path=WORKDIR / "landing", format="jsonl", settle_s=0)
pipeline.sink("stdout", asset=people, include_metadata=os.environ.get("STDOUT_META") == "1")
