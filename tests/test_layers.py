"""The layering rules: lower layers never import the experiment layer or the CLI (imports inside functions
included), no module imports itself back through others (no import circle), module names are unique, and no module
under src/ is longer than 400 lines."""

import ast
from collections import deque
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "clpoison"
LOWER = ("data", "models", "methods", "engine", "eval", "triggers", "poisoned", "attacks", "defenses", "audit", "report",
         "utils")
UPPER = ("clpoison.experiments", "clpoison.cli")


def package_of(path: Path) -> str:
    return ".".join(("clpoison",) + path.relative_to(SRC).with_suffix("").parts[:-1])


def import_statements(source: str, package: str):
    """``(module, names)`` of every import in ``source`` (a module of ``package``), at any depth, relative imports
    resolved: ``import a.b`` gives ``("a.b", [])``, ``from ..x import y, z`` gives ``("clpoison.x", ["y", "z"])``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                yield ".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names]
            else:
                yield node.module or "", [a.name for a in node.names]


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of every module ``source`` (a module of ``package``) imports, at any depth (relative
    imports resolved)."""
    names = set()
    for mod, imported in import_statements(source, package):
        names.add(mod)
        names.update(f"{mod}.{a}" for a in imported)  # `from .. import experiments`
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


# ------------------------------------------------------------------------------------------------------------------
# import circles


def module_sources(root: Path = SRC) -> dict[str, tuple[str, bool]]:
    """``{module name: (source, is_package)}`` of every module under ``root`` (a package is its ``__init__``)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = ("clpoison",) + p.relative_to(root).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (p.read_text(), is_pkg)
    return out


def import_graph(modules: dict[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """Module → the modules of ``modules`` that importing it runs, from every ``import`` / ``from … import`` at any
    depth (inside functions included: a circle closed at call time is still a circle).

    The rule for packages: ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one, else
    to ``pkg`` (its ``__init__``); importing ``a.b.c`` also runs the ``__init__`` of each enclosing package the
    importer is not itself inside (``a``, ``a.b``) — Python imports parents first, while the packages around the
    importer are already initialising. So a package's ``__init__`` that imports its children (the attack and defense
    registries) is no circle; a child that imports that ``__init__`` back (``from clpoison.attacks import ATTACKS``
    inside ``attacks/``), or a module outside that imports a child of a package whose ``__init__`` imports the
    importer, is one."""
    graph: dict[str, set[str]] = {}
    for name, (source, is_pkg) in modules.items():
        package = name if is_pkg else name.rpartition(".")[0]
        targets = set()
        for mod, imported in import_statements(source, package):
            targets.update([f"{mod}.{a}" if f"{mod}.{a}" in modules else mod for a in imported] or [mod])
        deps = set()
        for t in targets:
            while t and t not in modules:  # `import clpoison.x.y` of an attribute, or a third-party module
                t = t.rpartition(".")[0]
            if not t:
                continue
            deps.add(t)
            parts = t.split(".")
            for k in range(1, len(parts)):  # the enclosing packages' __init__ run first
                parent = ".".join(parts[:k])
                if not (name == parent or name.startswith(parent + ".")):
                    deps.add(parent)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle ``[a, b, …, a]`` per strongly connected component of more than one module."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:
        start = min(comp)
        prev, queue, found = {start: None}, deque([start]), None
        while queue and found is None:  # breadth first: the shortest way start → … → start inside the component
            v = queue.popleft()
            for w in sorted(graph[v] & comp):
                if w == start:
                    found = v
                    break
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [found]
        while prev[path[-1]] is not None:
            path.append(prev[path[-1]])
        out.append(path[::-1] + [start])
    return out


def test_cycle_checker_sees_function_level_and_package_circles():
    """The checker itself: a circle closed by an import inside a function is found and named; a package
    ``__init__`` importing its children is none, a child importing the ``__init__`` back is one."""
    mods = {
        "clpoison.a": ("from .b import x\n", False),
        "clpoison.b": ("def f():\n    from . import a\n", False),
        "clpoison.p": ("from . import child\n", True),
        "clpoison.p.child": ("from .sib import y\n", False),
        "clpoison.p.sib": ("import torch\n", False),
    }
    assert cycles(import_graph(mods)) == [["clpoison.a", "clpoison.b", "clpoison.a"]]
    mods["clpoison.p.sib"] = ("from clpoison.p import REGISTRY\n", False)
    assert ["clpoison.p", "clpoison.p.child", "clpoison.p.sib", "clpoison.p"] in cycles(import_graph(mods))
    mods["clpoison.p.sib"] = ("import torch\n", False)
    mods["clpoison.q"] = ("from .p.sib import y\n", False)  # runs p/__init__ first: q → p, no circle
    mods["clpoison.p.child"] = ("from .sib import y\nfrom .. import q\n", False)
    assert ["clpoison.p", "clpoison.p.child", "clpoison.q", "clpoison.p"] in cycles(import_graph(mods))


def test_no_import_circle():
    found = cycles(import_graph(module_sources()))
    assert not found, "import circles:\n" + "\n".join(" → ".join(c) for c in found)


def test_module_names_are_unique():
    """One name, one module: ``__init__.py`` and ``base.py`` (each package's interface) aside, no two modules under
    src/ share a file name (``cleanclip.py`` the defense vs. its loss, ``clip.py`` the method vs. the model)."""
    seen: dict[str, list[str]] = {}
    for p in sorted(SRC.rglob("*.py")):
        if p.name not in ("__init__.py", "base.py"):
            seen.setdefault(p.name, []).append(str(p.relative_to(SRC)))
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    assert not dup, dup


def data_floor(module: str):
    """0 for the image pieces at ``clpoison.data``'s root, 1 in ``data/captions/``, 2 in ``data/shards/``; None
    outside ``clpoison.data``."""
    for floor, pkg in ((2, "clpoison.data.shards"), (1, "clpoison.data.captions"), (0, "clpoison.data")):
        if module == pkg or module.startswith(pkg + "."):
            return floor
    return None


def test_data_packages_import_one_way():
    """``clpoison.data`` imports run one way, root ← captions ← shards: the image pieces at the root import neither
    caption package, the in-memory image–caption pairs (``data/captions/``) do not import the streamed split
    (``data/shards/``)."""
    bad = [f"{name} imports {d}" for name, deps in sorted(import_graph(module_sources()).items())
           if data_floor(name) is not None for d in sorted(deps) if (data_floor(d) or 0) > data_floor(name)]
    assert not bad, "\n".join(bad)
