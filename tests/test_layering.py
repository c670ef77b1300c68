"""The package's layers point one way. Inside the core (tuneloop/), each sub-package imports only the
ones below it; flows, serving and the evaluation suites sit above the core, the CLI above them all; the
training path imports no orchestration; and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER = ("tuneloop.flows", "tuneloop.serving", "tuneloop.cli", "tuneloop.eval_suites")
# the core, bottom to top: a module may import its own layer and the ones before it
CORE_LAYERS = [
    {"config", "credentials", "progress", "version_check"},  # settings, secrets' redaction, progress reporting
    {"data"},  # what is stored and how records become datasets
    {"access"},  # tokens and receipts, kept in the operations tables
    {"modeling"},  # models, adapters, training, inference (and the fenced fast paths)
    {"registry"},  # MLflow: versions, aliases, tracking
    {"search"},  # what the hyper-parameter search shares
    {"release"},  # flags, rollout, operations, drift
    {"costs"},  # costs read everything below
    {"reference"},  # the generated configuration reference
]


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (a function-level import hides a dependency too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "tuneloop" or len(parts) < 2:
        return None
    return next((i for i, layer in enumerate(CORE_LAYERS) if parts[1] in layer), None)


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts)


def _core_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "tuneloop").rglob("*.py") if "migrations" not in p.parts}


def test_every_core_module_belongs_to_a_layer():
    assert not [name for name in _core_modules() if name != "tuneloop" and _layer(name) is None]


def test_the_core_never_imports_the_layers_above_it():
    offenders = {
        str(p.relative_to(ROOT)): sorted(n for n in _imports(p) if n.startswith(UPPER))
        for p in (ROOT / "tuneloop").rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_each_core_layer_imports_only_the_layers_below_it():
    offenders = {}
    for name, path in _core_modules().items():
        own = _layer(name)
        if own is None:
            continue
        above = sorted(n for n in _imports(path) if (layer := _layer(n)) is not None and layer > own)
        if above:
            offenders[name] = above
    assert not offenders


def test_no_module_of_the_core_imports_itself_back():
    modules = _core_modules()
    graph = {name: {n for n in _imports(path) if n in modules and n != name} for name, path in modules.items()}
    cycles, done = [], set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            cycles.append(trail[trail.index(name) :] + [name])
            return
        if name in done:
            return
        for nxt in sorted(graph[name]):
            visit(nxt, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert not cycles


def test_flows_and_serving_never_import_the_cli():
    for folder in ("flows", "serving", "eval_suites"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not {n for n in _imports(path) if n.startswith("tuneloop.cli")}, path


def test_the_installed_package_never_imports_development_fixtures_or_suite_builders():
    """devtools/ and eval_suites/builders/ stay in the checkout: the product must not need them."""
    import tomllib

    installed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert not [p for p in installed if p.startswith("devtools") or p.startswith("tuneloop.eval_suites.builders")]
    product = [
        p
        for folder in ("tuneloop", "flows", "serving", "cli", "eval_suites")
        for p in (ROOT / folder).rglob("*.py")
        if "builders" not in p.relative_to(ROOT).parts
    ]
    offenders = {
        str(p.relative_to(ROOT)): sorted(
            n for n in _imports(p) if n.startswith(("devtools", "tuneloop.eval_suites.builders"))
        )
        for p in product
    }
    assert not {k: v for k, v in offenders.items() if v}
