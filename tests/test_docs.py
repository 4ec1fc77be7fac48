"""The documentation stays true to the repository.

The README stays short and its commands are the ones CI runs; every relative link
resolves; every key of the config schema is described in config/README.md with the
package's default (the schema states none); every figure and table marked for the
Snakemake report has a caption.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIG_README = ROOT / "config" / "README.md"
SCHEMA = ROOT / "config" / "config.schema.yaml"
RULES = ROOT / "workflow" / "rules"
REPORT = ROOT / "workflow" / "report"

README_MAX_LINES = 200
# Markdown files whose relative links must resolve.
DOCS = [
    README,
    CONFIG_README,
    ROOT / "benchmarks" / "README.md",
    *sorted((ROOT / "docs").rglob("*.md")),
]
# Headings of config/README.md whose tables list the keys of `defaults` and `variants`.
SETTINGS_HEADINGS = ("Model settings", "Training settings")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|([^|]*)\|")


def quick_start_commands() -> list[str]:
    """The shell commands of the README's Quick start, one per fenced bash block."""
    text = README.read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [" ".join(line.strip() for line in block.strip().splitlines()) for block in blocks]


def ci_commands() -> set[str]:
    """Every command of .ci/run (split at ``&&``), without pip's ``-q``."""
    commands = set()
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            commands.update(_normalized(part) for part in line.split("&&"))
    return commands


def _normalized(command: str) -> str:
    return shlex.join(word for word in shlex.split(command) if word != "-q")


def schema_paths(node: dict, prefix: str = "") -> dict[str, dict]:
    """Every key below ``node`` as a dotted path (``<name>`` for a free-named key)."""
    out = {}
    for key, child in node.get("properties", {}).items():
        path = prefix + key
        out[path] = child
        out.update(schema_paths(child, path + "."))
        named = child.get("additionalProperties")
        if isinstance(named, dict) and "properties" in named:
            out.update(schema_paths(named, path + ".<name>."))
    return out


def config_readme_rows() -> tuple[dict[str, str], dict[str, str]]:
    """Default cells of config/README.md's tables: ``(settings rows, other rows)``."""
    settings: dict[str, str] = {}
    other: dict[str, str] = {}
    heading = ""
    for line in CONFIG_README.read_text().splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            continue
        match = ROW.match(line)
        if match:
            key, _type, default = (group.strip() for group in match.groups())
            target = settings if heading.startswith(SETTINGS_HEADINGS) else other
            assert key not in target, f"config/README.md: `{key}` has two rows"
            target[key] = default
    return settings, other


def package_defaults() -> tuple[dict, dict]:
    """The config's defaults, read from the package: ``(settings, every other key)``."""
    from scvae.atlas.grid import ATLAS_DEFAULTS
    from scvae.config import config_defaults
    from scvae.training.settings import default_settings

    return default_settings(), {**config_defaults(), **ATLAS_DEFAULTS}


def _check_default(key: str, cell: str, defaults: dict) -> None:
    if key not in defaults:
        return
    assert cell.startswith("`") and cell.endswith("`"), (
        f"config/README.md: the default of `{key}` should be the package's, "
        f"{defaults[key]!r}, in backticks; got {cell!r}"
    )
    assert yaml.safe_load(cell.strip("`")) == defaults[key], (
        f"config/README.md: `{key}` defaults to {cell}, the package to {defaults[key]!r}"
    )


def report_calls(text: str) -> list[str]:
    """The argument text of every ``report(...)`` call in a rules file."""
    calls = []
    for match in re.finditer(r"\breport\(", text):
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        calls.append(text[match.end() : i - 1])
    return calls


def test_readme_is_short():
    n_lines = len(README.read_text().splitlines())
    assert n_lines <= README_MAX_LINES, (
        f"README.md has {n_lines} lines; keep it under {README_MAX_LINES} and move details to docs/"
    )


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0]
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)}: links to missing files: {broken}"


def test_readme_test_command_is_what_ci_runs():
    commands = quick_start_commands()
    assert len(commands) == 2, f"the Quick start should have two commands, found {commands}"
    install_and_run, tests = commands
    ci = ci_commands()
    for part in tests.split("&&"):
        assert _normalized(part) in ci, f"README test step {part.strip()!r} is not in .ci/run"
    # The environment CI builds is the README's: the venv and the pinned torch.
    for part in install_and_run.split("&&"):
        words = shlex.split(part)
        if words[:3] == ["python3", "-m", "venv"] or (
            words[:2] == [".venv/bin/pip", "install"] and "-e" not in words
        ):
            assert _normalized(part) in ci, f"README set-up step {part.strip()!r} is not in .ci/run"


def test_every_config_key_is_documented():
    schema = yaml.safe_load(SCHEMA.read_text())
    settings_rows, other_rows = config_readme_rows()
    settings_defaults, other_defaults = package_defaults()
    settings = schema["$defs"]["settings"]["properties"]
    missing = sorted(set(settings) - set(settings_rows))
    assert not missing, f"config/README.md: settings without a row: {missing}"
    extra = sorted(set(settings_rows) - set(settings))
    assert not extra, f"config/README.md: rows for settings the schema lacks: {extra}"
    for key in settings:
        _check_default(key, settings_rows[key], settings_defaults)

    paths = schema_paths(schema)
    # A key with keys of its own is documented by their rows; every other needs a row.
    parents = {path.rsplit(".", 1)[0] for path in paths if "." in path}
    parents |= {path.removesuffix(".<name>") for path in parents}
    undocumented = sorted(
        path
        for path in paths
        if path not in parents and path not in other_rows and f"{path}.<name>" not in other_rows
    )
    assert not undocumented, f"config/README.md: keys without a row: {undocumented}"
    unknown = sorted(k for k in other_rows if k.removesuffix(".<name>") not in paths)
    assert not unknown, f"config/README.md: rows for keys the schema lacks: {unknown}"
    for key, cell in other_rows.items():
        _check_default(key, cell, other_defaults)
    # Every default the package gives a key is on the page.
    missing = sorted(set(other_defaults) - set(other_rows) - {"variants", "with_batches", "query"})
    assert not missing, f"config/README.md: defaults without a row: {missing}"


def test_every_report_item_has_a_caption():
    used = set()
    for rules in sorted(RULES.glob("*.smk")):
        for call in report_calls(rules.read_text()):
            match = re.search(r"caption=\"([^\"]+)\"", call)
            assert match, f"{rules.name}: report({call.split(',')[0].strip()}, ...) has no caption"
            caption = (rules.parent / match.group(1)).resolve()
            assert caption.is_file(), f"{rules.name}: caption {match.group(1)} does not exist"
            used.add(caption)
    captions = {p.resolve() for p in REPORT.glob("*.rst")} - {(REPORT / "workflow.rst").resolve()}
    unused = sorted(p.name for p in captions - used)
    assert not unused, f"workflow/report: captions no report() uses: {unused}"


def readme_python_example() -> str:
    """The code block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_the_readme_python_example_is_short_and_uses_the_default_preset():
    code = readme_python_example()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 10, code
    imports = [line for line in lines if re.match(r"\s*(import|from)\s", line)]
    assert imports == ["import scvae"], imports
    # The model the example trains is the one this project recommends: no preset named.
    assert "scvae.SCVAE(adata" in code and "preset=" not in code


@pytest.mark.slow
def test_the_readme_python_example_runs_and_trains_recommended(tmp_path, monkeypatch):
    # Run as a reader would, from a folder with the repository's bundled data.
    (tmp_path / "resources").symlink_to(ROOT / "resources")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(readme_python_example(), str(README), "exec"), namespace)
    model, adata = namespace["model"], namespace["adata"]
    assert model.is_trained and model.preset == "recommended" and model.batch_key == "condition"
    assert model.module.config.n_latent == 10  # recommended's batch-aware form
    assert "scvae_leiden" in adata.obs and "X_umap" in adata.obsm
    assert {"CD14", "LYZ", "MS4A1", "NKG7"} <= set(adata.var_names)  # kept by the HVG step
    assert (tmp_path / "markers.png").read_bytes()[:4] == b"\x89PNG"
