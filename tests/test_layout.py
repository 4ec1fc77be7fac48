"""The package's shape: imports run one way, no private names cross modules, a light import."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
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

    Imports inside functions count: a deferred import is still a dependency. Imports
    under ``if TYPE_CHECKING:`` do not: they name a type for annotations and never run.
    """
    tree = ast.parse(path.read_text())
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
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


# An import inside a function says why it is not at the top of its module (it keeps
# `import scvae` or `scvae --help` light, it is an optional dependency, or a lower layer
# uses a higher one on demand): a comment on its line or on one of the lines above. The
# command line's deferred stage imports share one comment above its commands.
DEFERRED_IMPORT_EXEMPT = ("scvae.cli",)
COMMENT_REACH = 2
"""Lines above a function-level import where its comment may be."""


def _unexplained_imports(source: str) -> list[str]:
    """Imports inside a function with no comment on their line or the COMMENT_REACH above."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    commented = {t.start[0] for t in tokens if t.type == tokenize.COMMENT}
    found = {
        (node.lineno, ast.unparse(node))
        for function in ast.walk(ast.parse(source))
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and not commented & set(range(node.lineno - COMMENT_REACH, node.lineno + 1))
    }
    return [f"line {line}: {code}" for line, code in sorted(found)]


def test_every_function_level_import_says_why():
    modules = _modules()
    assert set(DEFERRED_IMPORT_EXEMPT) <= set(modules)  # no stale name in the exemptions
    offenders = [
        f"{name} {found}"
        for name, path in modules.items()
        if name not in DEFERRED_IMPORT_EXEMPT
        for found in _unexplained_imports(path.read_text())
    ]
    assert offenders == [], "move these to the top, or comment why they are deferred"


def test_the_deferred_import_guard_needs_a_comment_close_by():
    source = (
        "import os  # a module-level import needs no reason\n"
        "\n"
        "def f():\n"
        "    import torch\n"  # line 4: no comment
        "    # the diagnostics sit above the model\n"
        "    from scvae import diagnostics\n"  # line 6: a comment just above
        "    import scanpy  # light import\n"  # line 7: on its line
        "    x = '#'\n"
        "    y = 1\n"
        "    import numpy\n"  # line 10: a '#' in a string is no comment
        "    # too far above\n"
        "    y = 2\n"
        "    y = 3\n"
        "    import pyro\n"  # line 14: its comment is 3 lines up
        "\n"
        "class A:\n"
        "    def g(self):\n"
        "        def h():\n"
        "            import pandas\n"  # line 19: nested, reported once
        "        return h\n"
    )
    assert _unexplained_imports(source) == [
        "line 4: import torch",
        "line 10: import numpy",
        "line 14: import pyro",
        "line 19: import pandas",
    ]


# The core's layers, from the bottom up: each imports only itself, the layers below it
# and the shared helpers; nothing above (the model, the diagnostics, the stages, mapping,
# clustering, the comparison, the atlas) climbs back into them.
CORE_LAYERS = ("scvae.data", "scvae.module", "scvae.training")
SHARED = ("scvae.utils", "scvae.errors")


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _climbing(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a core layer into anything but itself, a lower layer or the helpers."""
    found = []
    for i, layer in enumerate(CORE_LAYERS):
        allowed = (*CORE_LAYERS[: i + 1], *SHARED)
        for name in sorted(n for n in graph if _within(n, layer)):
            found += [
                f"{name} -> {target}"
                for target in sorted(graph[name])
                if not any(_within(target, a) for a in allowed)
            ]
    return found


def test_the_core_layers_never_import_upwards():
    # Function-level imports count (see _imports): deferring one does not remove it.
    assert _climbing(_graph()) == []


def test_the_layer_guard_sees_a_climbing_import():
    graph = {
        "scvae.training.aggressive": {"scvae.diagnostics.mi", "scvae.module.vae"},
        "scvae.module.vae": {"scvae.training.objective", "scvae.utils.lazy"},
        "scvae.data.loaders": {"scvae.data.ondisk", "scvae.clustering"},
        "scvae.diagnostics.suite": {"scvae.model"},
    }
    assert _climbing(graph) == [
        "scvae.data.loaders -> scvae.clustering",
        "scvae.module.vae -> scvae.training.objective",
        "scvae.training.aggressive -> scvae.diagnostics.mi",
    ]


# Where the counts are ("layers['counts'] when present, else X") is decided in one place,
# scvae.data.loaders (counts_layer and the accessors built on it).
COUNTS_ACCESSOR = "scvae.data.loaders"
# Merging samples builds the counts layer from X: a different job from reading it.
COUNTS_BUILDERS = ("scvae.data.batches",)


def _tests_layers(node: ast.AST) -> bool:
    """Whether ``node`` holds ``... in <obj>.layers`` or ``... not in <obj>.layers``."""
    return any(
        isinstance(n, ast.Compare)
        and any(
            isinstance(op, ast.In | ast.NotIn)
            and isinstance(r, ast.Attribute)
            and r.attr == "layers"
            for op, r in zip(n.ops, n.comparators, strict=True)
        )
        for n in ast.walk(node)
    )


def _mentions_x(node: ast.AST) -> bool:
    """Whether ``node`` reads ``<obj>.X`` or names X in a string ("X", "AnnData X")."""
    return any(
        (isinstance(n, ast.Attribute) and n.attr == "X")
        or (
            isinstance(n, ast.Constant)
            and isinstance(n.value, str)
            and bool(re.search(r"\bX\b", n.value))
        )
        for n in ast.walk(node)
    )


def _counts_choices(source: str) -> list[str]:
    """The "a layer if present, else X" choices spelled in ``source``, as source text.

    A conditional expression testing membership in ``.layers`` that involves X or yields
    None (a layer name or None, meaning X), or a boolean expression testing it together
    with ``.X``.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.IfExp) and _tests_layers(node.test):
            to_none = any(
                isinstance(b, ast.Constant) and b.value is None for b in (node.body, node.orelse)
            )
            if to_none or _mentions_x(node):
                found.append(ast.unparse(node))
        elif isinstance(node, ast.BoolOp) and _tests_layers(node) and _mentions_x(node):
            found.append(ast.unparse(node))
    return found


def test_the_counts_layer_else_x_is_decided_only_by_the_accessor():
    offenders = [
        f"{name}: {choice}"
        for name, path in _modules().items()
        if name != COUNTS_ACCESSOR and not name.startswith(COUNTS_BUILDERS)
        for choice in _counts_choices(path.read_text())
    ]
    assert offenders == [], "use scvae.data.loaders: counts_layer, counts_source, counts_data"


def test_the_counts_guard_sees_each_spelling_of_the_choice():
    spelled = [
        "X = adata.layers['counts'] if 'counts' in adata.layers else adata.X",
        "where = \"layers['counts']\" if 'counts' in adata.layers else 'X'",
        "source = f'AnnData layer {layer!r}' if layer in adata.layers else 'AnnData X'",
        "d = {'layer': 'X' if layer is None or layer not in adata.layers else layer}",
        "layer = 'counts' if 'counts' in adata.layers else None",
        "if 'counts' not in adata.layers and adata.X is None:\n    raise ValueError",
    ]
    assert all(len(_counts_choices(code)) == 1 for code in spelled)
    other = [
        "layers = [DECODED] if DECODED in adata.layers else []",
        "if layer not in src.layers:\n    raise ValueError(layer)",
        "X = counts_data(adata, layer)",
    ]
    assert not any(_counts_choices(code) for code in other)
    # The accessor is where the choice lives, so the search must see it there.
    assert _counts_choices(_modules()[COUNTS_ACCESSOR].read_text())


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
        clashes += [
            f"{name}.{n}"
            for n in getattr(package, "__all__", [])
            # A submodule exported as itself (scvae.pp) is no clash: the module is the name.
            if n in children and getattr(package, n) is not sys.modules.get(f"{name}.{n}")
        ]
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
    # scvae.config and scvae.resources are what the Snakefile imports; config_defaults
    # reads the stage functions' signatures from their source, not by importing them.
    loaded = _loaded_after(
        "import scvae, scvae.config, scvae.resources, scvae.training.settings\n"
        "scvae.config.config_defaults()"
    )
    assert not set(HEAVY) & loaded
    # The names still resolve, loading what they need on first use.
    assert "torch" in _loaded_after("import scvae; scvae.SCVAE")


def test_the_scanpy_style_namespaces_are_light_until_used():
    loaded = _loaded_after("import scvae, scvae.pp, scvae.tl, scvae.pl\nscvae.tl.__all__")
    assert not (set(HEAVY) | {"matplotlib", "anndata"}) & loaded
    assert "scanpy" in _loaded_after("import scvae; scvae.tl.cluster")
    assert "matplotlib" in _loaded_after("import scvae; scvae.pl.qc")


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


# --- The workflow's rules files -------------------------------------------------------
RULES = ROOT / "workflow" / "rules"
SCHEMA = ROOT / "config" / "config.schema.yaml"
# The files of input functions. Their numbers (defaults, resource arithmetic) live in the
# package (scvae.config, scvae.resources); the rules files proper set each job's own
# (threads, the factors of its memory estimate).
INPUT_FUNCTION_FILES = ("common.smk", "atlas_common.smk")
MAX_FUNCTION_LINES = 12
# Options that read a dataset: built only by scvae.config.reader_options.
READER_FLAGS = ("--format", "--label-key", "--layer", "--transpose", "--batch-key")
READER_FLAGS += ("--covariates", "--samples")


def _smk_functions(text: str) -> list[ast.FunctionDef]:
    """The top-level functions of a rules file, whatever Snakemake syntax surrounds them."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.startswith("def "):
            end = i + 1
            while end < len(lines) and (not lines[end].strip() or lines[end][0].isspace()):
                end += 1
            node = ast.parse("\n".join(lines[i:end])).body[0]
            assert isinstance(node, ast.FunctionDef)
            found.append(node)
    return found


def _smk_offences(text: str) -> list[str]:
    """Numbers other than 0 and 1, and functions longer than MAX_FUNCTION_LINES."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    found = [
        f"line {t.start[0]}: {t.string}"
        for t in tokens
        if t.type == tokenize.NUMBER and t.string not in ("0", "1")
    ]
    found += [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in _smk_functions(text)
        if node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    return found


@pytest.mark.parametrize("name", INPUT_FUNCTION_FILES)
def test_input_function_files_hold_thin_functions_and_no_numbers(name):
    # Resource estimates are scvae.resources (unit-tested), defaults scvae.config.
    assert _smk_offences((RULES / name).read_text()) == []


def test_the_rules_guard_sees_arithmetic_and_long_functions():
    text = "rule a:\n    input: x\n\n\ndef runtime(wc, attempt):\n"
    text += "    s = 8e-9 * attempt\n" + "    s += 1\n" * MAX_FUNCTION_LINES + "    return s\n"
    text += "\nSMALL = 200\n"
    assert _smk_offences(text) == [
        "line 6: 8e-9",
        "line 21: 200",
        f"runtime: {MAX_FUNCTION_LINES + 3} lines",
    ]


def test_dataset_reading_options_are_built_in_one_place():
    offenders = [
        f"{rules.name}: {flag}"
        for rules in sorted(RULES.glob("*.smk"))
        for flag in READER_FLAGS
        if flag in rules.read_text()
    ]
    assert offenders == [], "use scvae.config.reader_options"


def test_the_schema_states_no_defaults():
    # Each default lives in the package (scvae.config.config_defaults, default_settings);
    # a schema default would be a second copy, which Snakemake's validate() would also
    # fill into every variant, overriding the variant's preset.
    import yaml

    def defaults(node, path: str) -> list[str]:
        if isinstance(node, dict):
            here = [path] if "default" in node else []
            return here + [p for k, v in node.items() for p in defaults(v, f"{path}/{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in defaults(v, f"{path}/{i}")]
        return []

    assert defaults(yaml.safe_load(SCHEMA.read_text()), "") == []
