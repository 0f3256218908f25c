"""pyproject and config schema agree; the config is validated (the conda environments: tests/test_envs.py)."""

import importlib.util
import re
import tomllib

import pytest
import yaml
from snakemake.utils import validate

from ccdflow.provenance import config_hash


def _pyproject_deps(root):
    data = tomllib.loads((root / "pyproject.toml").read_text())
    return data["project"]["dependencies"]


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.-]+)\s*(.*)$", requirement)
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_every_dependency_has_a_version_range(root):
    for requirement in _pyproject_deps(root):
        name, spec = _split(requirement)
        assert ">=" in spec and "<" in spec, f"{name} needs a lower and an upper bound"


def _floors(root):
    """.ci/lowest_constraints.py, which .ci/floors uses to install the dependency floors."""
    spec = importlib.util.spec_from_file_location("lowest_constraints", root / ".ci" / "lowest_constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_constraints_are_pyprojects_lower_bounds(root):
    """The floor step pins each runtime dependency, and only those, to its >= bound."""
    pins = dict(line.split("==") for line in _floors(root).constraints(root))
    deps = dict(_split(r) for r in _pyproject_deps(root))
    assert set(pins) == set(deps)
    for name, spec in deps.items():
        assert pins[name] == re.search(r">=([0-9][0-9.]*)", spec).group(1), name
    with pytest.raises(ValueError, match="lower bound"):
        _floors(root).floor("numpy<3")


def test_floor_test_tools_are_the_test_extra(root):
    """The floor step installs the test extra as pyproject has it, less the few it names."""
    floors = _floors(root)
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert set(floors.NOT_AT_FLOORS) <= {_split(r)[0] for r in extra}, "NOT_AT_FLOORS names no test dependency"
    assert floors.test_tools(root) == [r for r in extra if _split(r)[0] not in floors.NOT_AT_FLOORS]


def test_ci_runs_the_floor_step(root):
    assert "\n.ci/floors\n" in (root / ".ci" / "run").read_text()
    step = (root / ".ci" / "floors").read_text()
    assert "lowest_constraints.py constraints" in step and "lowest_constraints.py check" in step
    assert '-m pytest -m "not slow"' in step


def _config(root):
    return yaml.safe_load((root / "config" / "config.yaml").read_text())


def test_default_config_validates_and_fills_defaults(root):
    config = _config(root)
    validate(config, str(root / "workflow" / "schemas" / "config.schema.yaml"))
    assert config["inventory"]["shape_outlier_fraction"] == 0.2
    assert config["night"]["utc_offset_hours"] is None


@pytest.mark.parametrize(
    "change, named",
    [
        (lambda c: c["batch"].update(sise=3), "sise"),
        (lambda c: c["batch"].update(size=0), "size"),
        (lambda c: c["raw"][0].pop("instrument"), "instrument"),
        (lambda c: c.update(campaign="has space"), "campaign"),
        (lambda c: c["simulate"].update(preset="huge"), "preset"),
    ],
)
def test_wrong_key_or_value_is_named(root, change, named):
    config = _config(root)
    change(config)
    with pytest.raises(Exception) as info:
        validate(config, str(root / "workflow" / "schemas" / "config.schema.yaml"))
    assert named in str(info.value)


def test_config_hash_ignores_key_order_but_not_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_config_readme_examples_validate(root):
    """The configs config/README.md shows are valid configs (their raw folders aside)."""
    text = (root / "config" / "README.md").read_text()
    examples = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)]
    configs = [e for e in examples if isinstance(e, dict) and "campaign" in e]
    assert configs, "config/README.md shows no example config"
    for config in configs:
        validate(config, str(root / "workflow" / "schemas" / "config.schema.yaml"))


def test_code_identity_is_the_checkouts_commit_and_says_when_it_was_changed(tmp_path):
    """A checkout's HEAD, ``dirty`` once a tracked file changes (an untracked file, e.g. a
    results folder, is not a change to the code), and ``unknown`` outside any checkout."""
    import shutil
    import subprocess

    from ccdflow.provenance import code_identity

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    code_identity.cache_clear()
    (repo / "results.txt").write_text("made\n")
    assert code_identity(repo) == {"commit": head, "dirty": False, "source": "git"}
    code_identity.cache_clear()
    (repo / "a.py").write_text("x = 2\n")
    assert code_identity(repo) == {"commit": head, "dirty": True, "source": "git"}
    code_identity.cache_clear()
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    assert code_identity(outside)["source"] in ("unknown", "pip")
    code_identity.cache_clear()
