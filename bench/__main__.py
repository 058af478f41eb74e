"""Benchmark harness.

Convention every benchmark follows: ``python -m bench <name> [options] --json`` runs with the
project's own interpreter, starts the services it needs (reusing running ones), prints exactly
one JSON object on the last line of stdout with its figures plus ``target`` (a sentence) and
``met`` (true/false), and exits 0 once it has measured, met or not. Progress goes to stderr.

A benchmark is a module ``bench/<name with - as _>.py`` with ``add_arguments(parser)`` and
``async def run(args) -> dict``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
from pathlib import Path

import orjson


def _names() -> list[str]:
    here = Path(__file__).parent
    return sorted(m.name.replace("_", "-") for m in pkgutil.iter_modules([str(here)])
                  if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = _names()
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks: " + ", ".join(names))
        return 0
    name = argv.pop(0)
    if name not in names:
        print(f"unknown benchmark {name!r}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    mod = importlib.import_module(f"bench.{name.replace('-', '_')}")
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=mod.__doc__)
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    mod.add_arguments(parser)
    args = parser.parse_args(argv)
    result = asyncio.run(mod.run(args))
    if not args.json:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
