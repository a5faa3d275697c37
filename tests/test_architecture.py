"""The package layout's rules, read from the import graph with ``ast`` (docs/architecture.md).

- Layers import only downwards: typed, config < runtime < data < synth, core < train < evaluation < search <
  bench, workflows < cli.
- No import cycle between modules.
- ``core/`` and the pure modules of ``data/`` never import Ray.
- Ray is started (``ray.init``) and its resources are read (``ray.cluster_resources``) only by the runtime
  session, the one place that budgets CPUs for Ray Data.
- No module is over 400 lines.
Each checker is also run on a small package built here with the violation it must find.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "emodis_ray"
LAYERS = {"config": 0, "typed": 0, "__init__": 0, "configs": 0, "runtime": 1, "data": 2, "synth": 3, "core": 3,
          "train": 4, "evaluation": 5, "search": 6, "bench": 7, "workflows": 7, "cli": 8}
RAY_FREE = ("core", "data.features", "data.decode", "data.rows", "data.cache", "data.manifest", "data.labels",
            "data.sources", "data.tracks", "data.rawvideo", "data._decord", "synth.render", "config", "typed")
SESSION = "runtime.session"
MAX_LINES = 400


def modules(root: Path) -> dict[str, Path]:
    """``{"core.loop": path, ...}``: every module of the package under ``root``, named relative to it."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"
        out[name] = p
    return out


def imports(path: Path, package: str) -> list[tuple[str, int]]:
    """Every module imported anywhere in the file (top level or inside functions), with its line."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, node.lineno))
            out += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return out


def graph(root: Path, package: str = "emodis_ray") -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg.a import b`` counts ``a.b`` when it is a module)."""
    mods = modules(root)
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for name, _ in imports(path, package):
            if name.startswith(package + "."):
                target = name[len(package) + 1:]
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != m:
                    g[m].add(target)
    return g


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    return sorted(f"{a} -> {b}" for a, bs in g.items() for b in bs if layer(b) > layer(a))


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def ray_imports(root: Path) -> list[str]:
    """``module:line`` of every ``import ray`` (or ``ray.*``) in the Ray-free modules."""
    out = []
    for m, path in modules(root).items():
        if any(m == r or m.startswith(r + ".") for r in RAY_FREE):
            out += [f"{m}:{line}" for name, line in imports(path, "") if name == "ray" or name.startswith("ray.")]
    return out


def ray_session_calls(root: Path) -> list[str]:
    """``module:line`` of every ``ray.init(...)`` or ``ray.cluster_resources(...)`` outside the session."""
    out = []
    for m, path in modules(root).items():
        if m == SESSION:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("init", "cluster_resources")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"):
                out.append(f"{m}:{node.lineno} ray.{node.func.attr}")
    return out


def long_modules(root: Path) -> list[str]:
    return [f"{m}: {n} lines" for m, p in modules(root).items() if (n := len(p.read_text().splitlines())) > MAX_LINES]


# --- the package as it is -----------------------------------------------------------------------------------


def test_every_subpackage_has_a_layer() -> None:
    assert {m.split(".")[0] for m in modules(PACKAGE)} <= set(LAYERS)


def test_layers_import_only_downwards() -> None:
    assert upward_imports(graph(PACKAGE)) == []


def test_no_import_cycle() -> None:
    assert cycles(graph(PACKAGE)) == []


def test_core_and_pure_data_modules_import_no_ray() -> None:
    assert ray_imports(PACKAGE) == []


def test_ray_is_started_and_budgeted_only_by_the_session() -> None:
    assert ray_session_calls(PACKAGE) == []


def test_no_module_is_over_400_lines() -> None:
    assert long_modules(PACKAGE) == []


# --- the checkers find what they look for -----------------------------------------------------------------


@pytest.fixture
def bad_package(tmp_path: Path) -> Path:
    """A package with one of each violation."""
    root = tmp_path / "emodis_ray"
    files = {
        "__init__.py": "",
        "config.py": "",
        "core/__init__.py": "",
        "core/loop.py": "def f():\n    import ray.train\n",  # ray under core/, inside a function
        "data/__init__.py": "",
        "data/features.py": "from emodis_ray.train.fit import fit\n",  # data -> train: upwards
        "train/__init__.py": "",
        "train/fit.py": "from emodis_ray.data import features\n",
        "search/__init__.py": "",
        "search/a.py": "from emodis_ray.search import b\n",
        "search/b.py": "def g():\n    from emodis_ray.search.a import x\n",  # a cycle through a function import
        "bench/__init__.py": "",
        "bench/x.py": "import ray\nray.init(num_cpus=1)\n" + "x = 1\n" * 400,
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_checkers_find_each_violation(bad_package: Path) -> None:
    g = graph(bad_package)
    assert upward_imports(g) == ["data.features -> train.fit"]
    assert sorted(map(tuple, cycles(g))) == [("data.features", "train.fit"), ("search.a", "search.b")]
    assert ray_imports(bad_package) == ["core.loop:2"]
    assert ray_session_calls(bad_package) == ["bench.x:2 ray.init"]
    assert long_modules(bad_package) == ["bench.x: 402 lines"]


def test_test_modules_have_unique_names() -> None:
    """Tests mirror the package in folders without __init__.py, so pytest imports each test module by its
    file name: two test files of one name in two folders would collide at collection."""
    names = [p.name for p in Path(__file__).parent.rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
