"""The built-in connectors are plugins of the public SDK: pinned here.

Each lives under ``connectors/<name>/`` as ``streamflow_connector_<name>``, imports nothing of
StreamFlow but ``streamflow.connectors``'s ``__all__``, and keeps modules and functions small.
The old import paths still work for one release, with a DeprecationWarning.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

import streamflow.connectors as sdk

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = sorted(ROOT.glob("connectors/*/streamflow_connector_*"))
SHIMS = {
    "files": "streamflow_connector_files",
    "stdout": "streamflow_connector_stdout",
    "schedule": "streamflow_connector_schedule",
    "kafka": "streamflow_connector_kafka",
    "sqlite": "streamflow_connector_sql",
    "postgres": "streamflow_connector_sql",
    "webhook": "streamflow_connector_webhook",
}


def _modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in pkg.rglob("*.py"))


def test_each_builtin_has_its_folder_package_readme_and_tests() -> None:
    assert {p.parent.name for p in PACKAGES} == {
        "files", "stdout", "schedule", "kafka", "sql", "webhook"}
    for pkg in PACKAGES:
        folder = pkg.parent
        assert pkg.name == f"streamflow_connector_{folder.name}"
        assert (folder / "README.md").is_file()
        assert list((folder / "tests").glob("test_*.py")), f"{folder} has no tests"
        assert not (folder / "tests" / "__init__.py").exists()  # basenames stay unique instead
    assert not (ROOT / "connectors" / "__init__.py").exists()
    tests = [p.name for p in ROOT.glob("connectors/*/tests/test_*.py")]
    assert len(tests) == len(set(tests)), "test module basenames must be unique"


def test_nothing_is_importable_as_a_top_level_connectors() -> None:
    """No ``connectors`` package: at most the implicit namespace any folder on ``sys.path``
    is (the repository root is, in an editable install), with no code of its own."""
    spec = importlib.util.find_spec("connectors")
    assert spec is None or spec.origin is None, spec  # absent, or a namespace: no __init__.py
    assert not list((ROOT / "connectors").glob("*.py"))


def test_connectors_import_only_the_public_sdk() -> None:
    public = set(sdk.__all__)
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
                assert not any(n == "streamflow" or n.startswith("streamflow.") for n in names), \
                    f"{path}: import {names}"
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "streamflow":
                assert node.module == "streamflow.connectors", f"{path}: from {node.module}"
                used = {a.name for a in node.names}
                assert used <= public, f"{path}: {sorted(used - public)} not in the SDK's __all__"


def test_connector_modules_and_functions_stay_small() -> None:
    sdk_modules = sorted((ROOT / "streamflow" / "connectors").glob("*.py"))
    for path in [*_modules(), *sdk_modules]:
        text = path.read_text()
        assert text.count("\n") <= 400, f"{path} has {text.count(chr(10))} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                assert size <= 60, f"{path}:{node.lineno} {node.name} has {size} lines"


@pytest.mark.parametrize("old", [*SHIMS, "testing"])
def test_old_import_paths_reexport_with_a_deprecation_warning(old: str) -> None:
    name = "streamflow.testing" if old == "testing" else f"streamflow.connectors.{old}"
    new = "streamflow.connectors.testing" if old == "testing" else SHIMS[old]
    sys.modules.pop(name, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        shim = importlib.import_module(name)
    assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
               for w in caught), [str(w.message) for w in caught]
    target = importlib.import_module(new)
    for attr in shim.__all__:
        if hasattr(target, attr):
            assert getattr(shim, attr) is getattr(target, attr), attr
