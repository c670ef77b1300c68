"""The package's layers point one way: the core (tuneloop/) below flows, serving and the evaluation
suites, and the CLI above them all; and the training path imports no orchestration or tracking."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER = ("tuneloop.flows", "tuneloop.serving", "tuneloop.cli", "tuneloop.eval_suites")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_the_layers_above_it():
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith(UPPER))
                 for p in (ROOT / "tuneloop").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_flows_and_serving_never_import_the_cli():
    for folder in ("flows", "serving", "eval_suites"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not {n for n in _imports(path) if n.startswith("tuneloop.cli")}, path
