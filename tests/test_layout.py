"""The package's shape: imports run one way, no private names cross modules, a light import."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "scvae"
HEAVY = ("torch", "pyro", "scanpy")
# Experiments sit at the edge: only the atlas itself and the command line import it.
ATLAS_IMPORTERS = ("scvae.atlas", "scvae.cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The package module that ``target`` (a module or a name in one) is defined in."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def _imports(path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None]]:
    """(module imported, name imported from it) for every import of the package in ``path``.

    Imports inside functions count: a deferred import is still a dependency.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("scvae"):
                    found.append((_resolve(alias.name, modules), None))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scvae"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in modules:  # `from scvae.data import ondisk`: the module itself
                    found.append((full, None))
                else:
                    found.append((_resolve(node.module, modules), alias.name))
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target, _ in _imports(path, modules):
            if target and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_between_modules():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    modules = _modules()
    offenders = [
        f"{name} imports {target}.{imported}"
        for name, path in modules.items()
        for target, imported in _imports(path, modules)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert offenders == []


def test_no_module_of_the_package_is_private():
    private = [n for n in _modules() if any(p.startswith("_") for p in n.split(".")[1:])]
    private = [n for n in private if not n.endswith("__init__")]
    assert private == []


def test_only_the_atlas_and_the_cli_import_the_atlas():
    graph = _graph()
    offenders = [
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if target.startswith("scvae.atlas") and not name.startswith(ATLAS_IMPORTERS)
    ]
    assert offenders == []


def test_no_package_name_is_shadowed_by_a_submodule():
    # Importing scvae.x.y sets the attribute y of scvae.x to the module, which then hides a
    # lazy name y of scvae.x (the function would turn into a module after first use).
    import importlib

    clashes = []
    for name, path in _modules().items():
        if path.name != "__init__.py":
            continue
        package = importlib.import_module(name)
        children = {p.stem for p in path.parent.glob("*.py")} | {
            p.name for p in path.parent.iterdir() if (p / "__init__.py").exists()
        }
        clashes += [f"{name}.{n}" for n in getattr(package, "__all__", []) if n in children]
    assert clashes == []


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return {m.split(".")[0] for m in out.stdout.split()}


def test_importing_scvae_loads_neither_torch_pyro_nor_scanpy():
    loaded = _loaded_after("import scvae, scvae.config, scvae.training.settings")
    assert not set(HEAVY) & loaded
    # The names still resolve, loading what they need on first use.
    assert "torch" in _loaded_after("import scvae; scvae.SCVAE")


def test_cli_help_loads_neither_torch_pyro_nor_scanpy():
    loaded = _loaded_after(
        "import contextlib, io\nfrom scvae.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])"
    )
    assert not set(HEAVY) & loaded


@pytest.mark.parametrize("config", [[], ["--directory", ".test"]])
def test_parsing_the_snakefile_loads_neither_torch_pyro_nor_scanpy(config):
    snakemake = Path(sys.executable).with_name("snakemake")
    out = subprocess.run(
        [sys.executable, "-X", "importtime", str(snakemake), "-n", "--cores", "1", *config],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in out.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "snakemake" in imported  # the timing lines were read
    assert not set(HEAVY) & imported
