"""A tiny pipeline for CLI tests: JSON Lines files in, upper-cased names out."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from streamflow import Asset, Pipeline

WORKDIR = Path(os.environ.get("ECHO_WORKDIR", ".streamflow/echo"))
WATCH = os.environ.get("ECHO_WATCH") == "1"


class Person(BaseModel):
    id: int
    name: str


people = Asset("people", Person, key="id")
shouted = Asset("shouted", Person, key="id")

pipeline = Pipeline("echo")
pipeline.source("files", asset=people, path=WORKDIR / "landing", format="jsonl", watch=WATCH,
                settle_s=0.05, poll_interval_s=0.05)


@pipeline.stage(inputs=[people], output=shouted)
def shout(p: Person) -> Person:
    return Person(id=p.id, name=p.name.upper())


pipeline.sink("files", asset=shouted, path=WORKDIR / "out")
