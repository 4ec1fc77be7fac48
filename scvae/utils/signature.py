"""A function's parameter defaults, read from its source without importing its module.

The workflow fills the config keys a user leaves out with the defaults of the package
functions that take them (:func:`scvae.config.config_with_defaults`). Those functions
live in modules that import torch or scanpy, which parsing the Snakefile must not load;
their signatures are read here from the source text instead, so that each default is
written once, in the signature (as scvi-tools' ``SCVI.__init__`` and ``train()`` hold
theirs).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

__all__ = ["source_defaults"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _module_file(module: str) -> Path:
    parts = module.split(".")
    if parts[0] != PACKAGE_DIR.name:
        raise ValueError(f"{module!r} is not a module of the {PACKAGE_DIR.name} package")
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    raise ValueError(f"module {module!r} not found under {PACKAGE_DIR}")


def _definitions(tree: ast.Module) -> dict[str, ast.AST | tuple[str, str]]:
    """Module-level names: functions, constants (their value), imports (module, name)."""
    found: dict[str, ast.AST | tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            found[node.target.id] = node.value
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] == PACKAGE_DIR.name:
                for alias in node.names:
                    found[alias.asname or alias.name] = (node.module, alias.name)
    return found


def _value(node: ast.AST, module: str, where: str) -> Any:
    """The value of a default: a literal, or a module-level constant of the package."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Name):
            return _constant(module, node.id, where)
        raise ValueError(
            f"{where}: the default {ast.unparse(node)!r} is neither a literal nor a constant "
            "of the package, so it cannot be read without importing the module"
        ) from None


def _constant(module: str, name: str, where: str) -> Any:
    """A module-level constant of ``module``, followed through imports from the package."""
    definition = _definitions(ast.parse(_module_file(module).read_text())).get(name)
    if isinstance(definition, tuple):
        return _constant(*definition, where)
    if definition is None or isinstance(definition, ast.FunctionDef | ast.AsyncFunctionDef):
        raise ValueError(f"{where}: {name!r} is not a constant of {module}")
    return _value(definition, module, where)


def source_defaults(module: str, function: str) -> dict[str, Any]:
    """The default of each parameter of ``module.function`` that has one, from its source.

    The module is parsed, not imported. A default must be a literal (``15``, ``(1.0,)``,
    ``None``) or a module-level constant of the package (``HARMONY_N_COMPONENTS``,
    followed through ``from scvae... import``).

    Parameters
    ----------
    module
        Dotted name of a module of the package, e.g. ``"scvae.stages.cluster"``.
    function
        Name of a function defined at the top of that module.

    Returns
    -------
    dict
        Parameter name -> default value, in signature order; parameters without a
        default are left out.

    Raises
    ------
    ValueError
        If the module or the function does not exist, or a default is an expression
        that cannot be read without running the module (naming the file, the function
        and the parameter).
    """
    path = _module_file(module)
    node = _definitions(ast.parse(path.read_text())).get(function)
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        raise ValueError(f"{path}: no function {function!r} at the top of {module}")
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    pairs = list(
        zip(positional[len(positional) - len(args.defaults) :], args.defaults, strict=True)
    )
    pairs += [
        (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
    ]
    where = f"{path}: {function}"
    return {arg.arg: _value(default, module, f"{where}({arg.arg}=...)") for arg, default in pairs}
