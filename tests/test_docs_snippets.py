"""Every Python snippet in the README and docs parses, and every StreamFlow import in it runs
against current paths: an old (deprecated) path fails here. The README's pipeline runs whole
and validates; longer stories are run by their example's own test (tests/test_retail.py)."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("connectors/*/README.md"),
                *ROOT.glob("examples/*/README.md")])
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _snippets() -> list[tuple[str, str]]:
    return [(f"{p.relative_to(ROOT)}#{i}", m.group(1))
            for p in PAGES for i, m in enumerate(BLOCK.finditer(p.read_text()))]


SNIPPETS = _snippets()


def test_there_are_snippets_to_check() -> None:
    assert len(SNIPPETS) >= 15
    assert any(name.startswith("README.md") for name, _ in SNIPPETS)


@pytest.mark.parametrize(("name", "code"), SNIPPETS, ids=[n for n, _ in SNIPPETS])
def test_snippet_parses_and_imports_current_paths(name: str, code: str) -> None:
    tree = ast.parse(code, name)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
               and any(m.split(".")[0] == "streamflow" for m in _modules(n))]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        exec(compile(ast.Module(body=imports, type_ignores=[]), name, "exec"), {})


def _modules(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return [a.name for a in node.names]


def test_readme_pipeline_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``shop.py`` declares a valid pipeline."""
    code = next(c for n, c in SNIPPETS if n.startswith("README.md") and "# shop.py" in c)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "shop"}
    exec(compile(code, "README.md:shop.py", "exec"), scope)
    pipeline = scope["pipeline"]
    pipeline.validate()  # type: ignore[attr-defined]
