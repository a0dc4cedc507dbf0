"""The package's layers, read from its source (every import, function-level ones included):
each layer imports only the layers below it, and the module graph has no cycle."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sampler"
#: bottom to top; a module may import its own layer and those before it.  ``sampler.errors`` is
#: the shared base; the top-level modules (``cli``, the package itself, the ``kalman`` alias) may
#: import anything.
LAYERS = ("core", "storage", "execution", "analysis", "bench")


def _modules(package: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for f in package.rglob("*.py"):
        name = ".".join(("sampler",) + f.relative_to(package).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The ``sampler`` modules ``name`` imports anywhere in its source (resolved to ``mods``)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(target: str):
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "sampler"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "sampler":
                found |= {resolve(f"{base}.{a.name}") for a in node.names}
    return {m for m in found if m and m != name}


def _layer(module: str):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def layer_violations(package: Path = PACKAGE) -> list[str]:
    mods, violations = _modules(package), []
    for name, path in mods.items():
        own = _layer(name)
        if own is None:
            continue  # sampler, sampler.cli, sampler.__main__, sampler.kalman, sampler.errors
        allowed = set(LAYERS[: LAYERS.index(own) + 1])
        for dep in _imports(name, path, mods):
            if dep != "sampler.errors" and _layer(dep) not in allowed:
                violations.append(f"{name} imports {dep}")
    return sorted(violations)


def test_each_layer_imports_only_the_layers_below_it():
    violations = layer_violations()
    assert not violations, "\n".join(violations)


def test_the_core_knows_no_files_or_ray():
    """The pure core imports neither our storage/run/analysis layers nor file, store or cluster libraries."""
    banned = {"zarr", "orbax", "ray", "xarray", "pandas", "fsspec", "matplotlib", "tqdm"}
    for name, path in _modules().items():
        if _layer(name) != "core":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not {n.split(".")[0] for n in names} & banned, f"{name} imports {names}"


def test_no_import_cycles():
    mods = _modules()
    graph = {name: _imports(name, path, mods) for name, path in mods.items()}
    # a package's __init__ re-exporting its children is not a dependency edge
    graph = {n: {d for d in deps if not (mods[n].name == "__init__.py" and d.startswith(n + "."))}
             for n, deps in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_a_core_import_of_the_execution_layer_is_caught(tmp_path):
    """The check itself, on a copy of the package: a core module importing the execution layer inside a
    function, and a storage module importing analysis at the top, are both reported."""
    copy = tmp_path / "sampler"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "core" / "probe.py").write_text("def f():\n    from sampler.execution import runner\n    return runner\n")
    (copy / "storage" / "probe.py").write_text("from sampler.analysis.scores import LEVELS\n")
    assert layer_violations(copy) == ["sampler.core.probe imports sampler.execution.runner",
                                      "sampler.storage.probe imports sampler.analysis.scores"]


def test_public_api_survives_importing_every_module():
    """``sampler.run`` and ``sampler.open_run`` are functions (SPEC), so no subpackage may be named
    like them: importing a subpackage binds its name on the package and would replace the function."""
    import importlib
    import inspect

    import sampler
    for name in _modules():
        if name != "sampler.__main__":
            importlib.import_module(name)
    assert inspect.isfunction(sampler.run) and inspect.isfunction(sampler.open_run)
    assert sampler.kalman.marginal_log_prob.__module__ == "sampler.core.kalman.filter"
