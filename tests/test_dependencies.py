"""pyproject's ranges, constraints.txt's exact set and the places that install them agree.

pyproject.toml declares the versions scvae works with (ranges, so that it installs next to
other scverse tools); constraints.txt pins the one set that the README's commands, CI
(.ci/run) and the workflow's conda env (envs/scvae.yaml) install.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# The test extra's packages and their own dependencies: in constraints.txt, not in the
# conda env of the workflow.
TEST_ONLY = {"pytest", "hypothesis", "ruff", "iniconfig", "pluggy", "sortedcontainers"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _extra(name: str) -> list[Requirement]:
    """The requirements an extra lists, self-references (``scvae[...]``) included."""
    return [Requirement(line) for line in _project()["optional-dependencies"][name]]


def _requirements(*extras: str) -> list[Requirement]:
    """What ``pip install scvae[extras]`` asks for, self-references followed."""
    project = _project()
    found = [Requirement(line) for line in project["dependencies"]]
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in _extra(extra):
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                todo += sorted(req.extras)
            else:
                found.append(req)
    return found


def _names(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


def _pins(lines: list[str]) -> dict[str, Version]:
    """``name==version`` lines (comments and blank lines skipped) as name -> version."""
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", line)
        assert m, f"not an exact pin: {line!r}"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"{name} pinned twice"
        pins[name] = Version(m.group(2))
    return pins


@pytest.fixture(scope="module")
def constraints() -> dict[str, Version]:
    return _pins((ROOT / "constraints.txt").read_text().splitlines())


def _install_lines(text: str) -> list[str]:
    """The commands that install scvae itself (``pip install ... -e ...``)."""
    return [line for line in text.splitlines() if re.search(r"pip install .*-e ", line)]


def test_pyproject_declares_ranges_not_pins():
    for req in _requirements(*_project()["optional-dependencies"]):
        operators = {spec.operator for spec in req.specifier}
        assert operators & {">=", "~="}, f"{req}: no lower bound"
        assert not operators & {"==", "==="}, f"{req}: a pin; exact versions go in constraints.txt"


def test_pynndescent_0_7_0_is_excluded():
    # scanpy 1.11.5's pp.neighbors crashes on more than 4096 cells with pynndescent 0.7.0.
    (req,) = [r for r in _requirements() if r.name == "pynndescent"]
    assert Version("0.7.0") not in req.specifier


def test_constraints_pin_every_dependency_within_its_range(constraints):
    for req in _requirements("test"):
        name = canonicalize_name(req.name)
        assert name in constraints, f"{name} is not in constraints.txt"
        assert req.specifier.contains(constraints[name], prereleases=True), (
            f"constraints.txt pins {name}=={constraints[name]}, outside pyproject's {req}"
        )


def test_conda_env_installs_the_constraints_without_the_test_extra(constraints):
    env = yaml.safe_load((ROOT / "envs" / "scvae.yaml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip) == {k: v for k, v in constraints.items() if k not in TEST_ONLY}
    # Everything the workflow runs (on SLURM too) is in the env.
    assert not _names(_requirements("workflow", "slurm")) & TEST_ONLY


def test_the_core_has_no_workflow_engine_and_no_jax():
    # A library user gets the model, not Snakemake, its plugins or scib-metrics' JAX.
    core = _names(_requirements())
    for extra in ("workflow", "slurm", "integration"):
        assert not core & _names(_extra(extra)), f"the core lists a package of [{extra}]"
    assert {"snakemake", "scib-metrics", "harmonypy", "jsonschema"}.isdisjoint(core)


def test_extras_refer_only_to_extras_that_exist():
    project = _project()
    extras = set(project["optional-dependencies"])
    for name in extras:
        for req in _extra(name):
            if canonicalize_name(req.name) == canonicalize_name(project["name"]):
                assert req.extras <= extras, f"[{name}] refers to {req.extras - extras}"
                assert not req.specifier, f"[{name}]: {req} pins scvae itself"


def test_the_test_extra_brings_every_extra_but_scvi():
    # CI installs `.[test]` and runs the workflow, SLURM included; scVI is optional there
    # (its tests skip without it).
    test = _names(_requirements("test"))
    for extra in set(_project()["optional-dependencies"]) - {"test", "scvi"}:
        assert _names(_requirements(extra)) <= test, f"[test] lacks part of [{extra}]"
    (line,) = _install_lines((ROOT / ".ci" / "run").read_text())
    assert "test" in _installed_extras(line), f".ci/run: {line.strip()!r} is not `.[test]`"


def _installed_extras(line: str) -> set[str]:
    """The extras of ``pip install -e '.[a,b]'`` in a command line (empty for ``-e .``)."""
    m = re.search(r"-e\s+'?\.(?:\[([^\]]*)\])?'?(?:\s|$)", line)
    assert m, f"no `-e .` in {line!r}"
    return {e.strip() for e in (m.group(1) or "").split(",") if e.strip()}


def test_the_quick_start_installs_what_the_default_workflow_runs():
    (line,) = [ln for ln in _install_lines((ROOT / "README.md").read_text()) if "snakemake" in ln]
    extras = _installed_extras(line)
    assert _names(_requirements("workflow")) <= _names(_requirements(*extras)), (
        f"README.md: the Quick start installs {extras or 'no extra'}, not the workflow's"
    )


@pytest.mark.parametrize("path", ["README.md", ".ci/run"])
def test_install_commands_use_the_constraints(path, constraints):
    text = (ROOT / path).read_text()
    lines = _install_lines(text)
    assert lines, f"{path} has no `pip install -e` command"
    for line in lines:
        assert "-c constraints.txt" in line, f"{path}: {line.strip()!r} without the constraints"
    # torch is installed first, on its own (pip would otherwise pull a CUDA build).
    torch = set(re.findall(r"pip install (?:-q )?torch==(\S+)", text))
    assert torch == {str(constraints["torch"])}, f"{path} installs torch {torch}"
