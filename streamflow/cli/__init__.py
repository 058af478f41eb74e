"""The ``streamflow`` command: argument parsing and printing only; nothing imports it."""

from ._main import build_parser, main

__all__ = ["build_parser", "main"]
