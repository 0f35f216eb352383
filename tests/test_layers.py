"""The layering rules: lower layers never import the experiment layer or the CLI (imports inside functions
included), and no module under src/ is longer than 400 lines."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clpoison"
LOWER = ("data", "models", "methods", "engine", "eval", "attacks", "defenses", "audit", "report", "utils")
UPPER = ("clpoison.experiments", "clpoison.cli")


def package_of(path: Path) -> str:
    return ".".join(("clpoison",) + path.relative_to(SRC).with_suffix("").parts[:-1])


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of every module ``source`` (a module of ``package``) imports, at any depth (relative
    imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)  # `from .. import experiments`
    return names


def test_resolves_relative_and_nested_imports():
    """The checker itself: function-level relative imports of the experiment layer and the CLI are seen."""
    src = "import torch\ndef f():\n    from ..experiments.config import build_config\n    from .. import cli\n"
    names = imported_modules(src, "clpoison.attacks")
    assert {"clpoison.experiments.config", "clpoison.cli", "torch"} <= names
    assert "clpoison.experiments.tasks" in imported_modules("from .tasks import x", "clpoison.experiments")


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_do_not_import_experiments_or_cli(layer):
    bad = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for name in imported_modules(path.read_text(), package_of(path)):
            if any(name == u or name.startswith(u + ".") for u in UPPER):
                bad.append(f"{path.relative_to(SRC)} imports {name}")
    assert not bad, "\n".join(bad)


def test_no_module_over_400_lines():
    long = [f"{p.relative_to(SRC)}: {n}" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, "\n".join(long)
