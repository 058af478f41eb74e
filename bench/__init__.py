"""Benchmarks: ``python -m bench <name> [options] --json``. Never timed assertions in tests."""
