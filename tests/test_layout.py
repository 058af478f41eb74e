"""The core's layout, pinned: package docstrings, sizes, and imports that close no cycle.

The dependency rule itself is import-linter's (``lint-imports`` in CI, contracts in
``pyproject.toml``); this checks the habits it cannot see.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "streamflow"
PACKAGES = ["model", "transports", "observability", "state", "triggers", "gates", "engine",
            "backfill", "ops", "catalog", "cli", "devservices", "connectors"]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Argument-parser builders: one add_argument after another, clearer long than split.
LONG_FUNCTIONS_ALLOWED = {("streamflow/cli/_main.py", "build_parser")}


def _sources() -> list[Path]:
    return sorted([*CORE.rglob("*.py"), *ROOT.glob("connectors/*/streamflow_connector_*/**/*.py")])


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def test_each_package_says_what_it_is_for_and_may_import() -> None:
    for name in PACKAGES:
        doc = ast.get_docstring(ast.parse((CORE / name / "__init__.py").read_text()))
        assert doc, f"streamflow/{name}/__init__.py has no docstring"
        if name not in ("cli", "connectors"):
            assert "import" in doc, f"streamflow/{name}: the docstring names no import rule"


def test_modules_and_functions_stay_small() -> None:
    too_long: list[str] = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {lines} lines")
        for fn in _functions(ast.parse(text)):
            n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if n > MAX_FUNCTION_LINES and (rel, fn.name) not in LONG_FUNCTIONS_ALLOWED:
                too_long.append(f"{rel}:{fn.lineno} {fn.name}: {n} lines")
    assert not too_long, "split these:\n" + "\n".join(too_long)


def _deferred_comment(lines: list[str], node: ast.stmt) -> bool:
    """The comment block right above the import (or on its line) says why it is deferred."""
    i = node.lineno - 2
    block = [lines[node.lineno - 1]]
    while i >= 0 and (lines[i].strip().startswith("#") or lines[i].strip().startswith("try:")):
        block.append(lines[i])
        i -= 1
    return any("# deferred" in line.lower() for line in block)


def test_no_import_inside_a_function_or_type_checking_closes_a_cycle() -> None:
    """A function-level import is only a deferral with a ``# Deferred: why`` comment above
    it (an optional or slow dependency), never one of our own packages' modules; nothing is
    imported under ``TYPE_CHECKING``."""
    found: list[str] = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        tree = ast.parse(text)
        lines = text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (
                            sub.level or (sub.module or "").startswith("streamflow")):
                        found.append(f"{rel}:{sub.lineno} under TYPE_CHECKING")
        for fn in _functions(tree):
            for sub in ast.walk(fn):
                if not isinstance(sub, ast.Import | ast.ImportFrom):
                    continue
                own = isinstance(sub, ast.ImportFrom) and (
                    sub.level > 0 or (sub.module or "").startswith("streamflow"))
                # The one own module deferred: the OpenLineage client it wraps is slow to load.
                if own and not (rel == "streamflow/observability/_run_events.py"
                                and sub.module == "_lineage"):
                    found.append(f"{rel}:{sub.lineno} imports our own module in {fn.name}()")
                elif not _deferred_comment(lines, sub):
                    found.append(f"{rel}:{sub.lineno} defers an import without a "
                                 "'# Deferred: why' comment")
    assert not found, "\n".join(found)


def test_nothing_is_importable_as_a_top_level_connectors(tmp_path: Path) -> None:
    """Outside the repository (no test path tricks), ``import connectors`` finds nothing."""
    out = subprocess.run([sys.executable, "-c", "import connectors"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "No module named 'connectors'" in out.stderr
