"""The rules' software environments: envs/*.yaml (snakemake --sdm conda), their linux-64
pin files, the container image (--sdm apptainer), and how a job's script finds the
package when its environment lacks it.

Creating the environments needs conda and the image needs docker, neither of which
these tests use: they check the files, what the workflow's rules name, and what the
scripts import, against pyproject.toml."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
# conda package name -> the name Python imports it by, where they differ
IMPORT_NAMES = {"pyyaml": "yaml", "batman-package": "batman"}


def _conda_spec(dep: str) -> tuple[str, SpecifierSet]:
    """``numpy >=1.26,<3`` (a conda match spec with a version range) -> name, specifier."""
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", dep.strip())
    return match.group(1).lower(), SpecifierSet(match.group(2).replace(" ", ""))


def _env(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _env_specs(path: Path) -> dict[str, SpecifierSet]:
    return dict(_conda_spec(d) for d in _env(path)["dependencies"] if isinstance(d, str))


def _runtime_deps() -> dict[str, SpecifierSet]:
    """pyproject's [project].dependencies, but Snakemake: the jobs use the Snakemake that
    runs them (it puts itself on the job's sys.path), and the environments must not hold
    another one."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps]
    return {r.name.lower(): r.specifier for r in reqs if r.name.lower() != "snakemake"}


def _version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# -- the environment files ------------------------------------------------------------
def test_there_are_environments_per_group():
    assert {p.stem for p in ENVS} >= {"core", "plots", "simulate"}
    assert not (ROOT / "envs" / "ccdflow.yaml").exists(), "the one-for-all env was split into groups"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_file_parses(path):
    env = _env(path)
    assert isinstance(env, dict) and set(env) <= {"name", "channels", "dependencies"}
    assert env["channels"][0] == "conda-forge" and "defaults" not in env["channels"]
    assert all(isinstance(d, str) for d in env["dependencies"]), "no pip: section (the package is not installed)"
    specs = _env_specs(path)
    assert "python" in specs and SpecifierSet(">=3.11") == specs["python"]


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_no_env_lists_snakemake_or_installs_the_project(path):
    text = path.read_text()
    names = set(_env_specs(path))
    assert not {n for n in names if n.startswith("snakemake")}, f"{path.name} lists snakemake"
    assert "ccdflow" not in names and "-e " not in text and "../" not in text.split("dependencies:")[1]


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_env_versions_are_pyprojects(path):
    """Every package an env names is a runtime dependency, with pyproject's range."""
    runtime = _runtime_deps()
    for name, spec in _env_specs(path).items():
        if name == "python":
            continue
        assert name in runtime, f"{path.name}: {name} is not in pyproject's [project].dependencies"
        assert spec == runtime[name], f"{path.name}: {name} {spec} but pyproject says {runtime[name]}"


def test_every_runtime_dependency_is_in_an_environment():
    listed = {}
    for path in ENVS:
        for name, spec in _env_specs(path).items():
            listed.setdefault(name, set()).add(str(spec))
    for name, spec in _runtime_deps().items():
        assert name in listed, f"{name} (pyproject) is in no envs/*.yaml"
        assert listed[name] == {str(spec)}, f"{name}: envs say {listed[name]}, pyproject {spec}"


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_pin_file_pins_the_env_packages_inside_their_ranges(path):
    pin = path.with_name(f"{path.stem}.linux-64.pin.txt")
    assert pin.is_file(), f"no {pin.name}: run .venv/bin/python envs/make_pins.py"
    lines = [line for line in pin.read_text().splitlines() if line and not line.startswith("#")]
    assert "make_pins.py" in pin.read_text()  # says how it was made
    pinned = {}
    for line in lines:
        match = re.fullmatch(r"conda-forge::([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+-]*)", line)
        assert match, f"{pin.name}: {line!r} is not conda-forge::name==version"
        pinned[match.group(1)] = match.group(2)
    specs = _env_specs(path)
    assert set(pinned) == set(specs), f"{pin.name} pins {sorted(pinned)}, {path.name} lists {sorted(specs)}"
    for name, version in pinned.items():
        assert specs[name].contains(version), f"{pin.name}: {name}=={version} outside {path.name}'s {specs[name]}"


# -- what the rules name ---------------------------------------------------------------
_RULES_PROBE = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ResourceSettings
    with SnakemakeApi() as api:
        workflow = api.workflow(ResourceSettings(), snakefile=Path(sys.argv[1]), workdir=Path.cwd())._workflow
        rules = {}
        for rule in workflow.rules:
            base = os.fspath(rule.basedir)
            rules[rule.name] = {
                "conda": os.path.normpath(os.path.join(base, rule.conda_env)) if rule.conda_env else None,
                "script": os.path.normpath(os.path.join(base, rule.script)) if rule.script else None,
                "container": rule.container_img,
            }
    print("RULES=" + json.dumps(rules))
""")


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> dict[str, dict]:
    """Every rule of the parsed workflow (Snakemake's own API, no DAG): its conda env
    file and script, resolved as Snakemake resolves them (relative to the rule file).
    Parsed in a folder of its own: the run lock and results go there."""
    work = tmp_path_factory.mktemp("rules")
    result = subprocess.run([sys.executable, "-c", _RULES_PROBE, str(ROOT / "Snakefile")], cwd=work,
                            capture_output=True, text=True, timeout=300, check=False)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RULES=")), None)
    assert line, f"parsing the workflow failed:\n{result.stderr[-4000:]}"
    return json.loads(line.removeprefix("RULES="))


def test_every_rule_with_a_job_names_an_existing_env(rules):
    jobs = {name: rule for name, rule in rules.items() if name != "all"}
    assert len(jobs) >= 20
    for name, rule in jobs.items():
        assert rule["conda"], f"rule {name} has no conda: directive"
        env = Path(rule["conda"])
        assert env.is_file() and env.parent == ROOT / "envs", f"rule {name}: {env} is not one of envs/*.yaml"
        assert rule["script"] and Path(rule["script"]).is_file(), f"rule {name}: no script"


def test_rule_files_name_envs_by_a_path_relative_to_themselves():
    """Read from the .smk text too: each rule block has one ``conda:`` line, a path from
    workflow/rules/ to an existing env file (what Snakemake resolves it against)."""
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^\s*(?=(?:rule|checkpoint)\b[^\n]*:\s*$)", smk.read_text(), flags=re.MULTILINE)
        for block in blocks:
            if not re.match(r"(rule|checkpoint)\b", block):
                continue
            envs = re.findall(r"^\s*conda:\s*\n\s*\"([^\"]+)\"", block, flags=re.MULTILINE)
            assert len(envs) == 1, f"{smk.name}: a rule block with {len(envs)} conda: directives:\n{block[:200]}"
            assert (smk.parent / envs[0]).resolve().is_file(), f"{smk.name}: {envs[0]} does not exist"


def test_groups(rules):
    by_env = {}
    for name, rule in rules.items():
        if rule["conda"]:
            by_env.setdefault(Path(rule["conda"]).stem, set()).add(name)
    assert by_env["simulate"] == {"simulate_night"}
    assert by_env["plots"] == {"lightcurves", "qa_field", "qa_masters", "qa_targets", "qa_night"}
    assert {"inventory", "calibrate_science", "master_flat", "photometry", "manifest"} <= by_env["core"]


def test_container_image_is_the_package_version(rules):
    image = f"docker://ghcr.io/ccdflow/ccdflow:{_version()}"
    assert {rule["container"] for rule in rules.values()} == {image}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ghcr.io/ccdflow/ccdflow:{_version()}" in dockerfile
    for pin in re.findall(r"envs/([\w.-]+\.pin\.txt)", dockerfile):
        assert (ROOT / "envs" / pin).is_file(), f"the Dockerfile installs envs/{pin}, which does not exist"
    # the image's environment holds every runtime dependency: it installs the plots pins (a
    # superset of the core env) and the simulator's
    installed = set()
    for pin in re.findall(r"envs/([\w-]+)\.linux-64\.pin\.txt", dockerfile):
        installed |= set(_env_specs(ROOT / "envs" / f"{pin}.yaml"))
    assert set(_runtime_deps()) <= installed


# -- what the scripts import -------------------------------------------------------------
_BLOCKER = textwrap.dedent("""
    # The named packages are absent, as in an environment without them: every finder
    # says so (import raises ModuleNotFoundError, importlib.util.find_spec gives None, so
    # the optional imports of astropy or photutils take their fallbacks).
    import sys
    BLOCKED = set(sys.argv[1].split(","))
    class Hide:
        def __init__(self, inner):
            self.inner = inner
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            return self.inner.find_spec(name, path, target)
        def __getattr__(self, attr):
            return getattr(self.inner, attr)
    sys.meta_path[:] = [Hide(finder) for finder in sys.meta_path]
""")


def _top_level_imports(script: Path) -> str:
    """The script's module-level imports after its package bootstrap (the try block)."""
    tree = ast.parse(script.read_text())
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def test_scripts_import_only_what_their_environment_holds(rules):
    """Each rule's script imports, with the project's other runtime dependencies made
    unimportable: a dependency its env file lacks fails here (the imports inside
    functions run in the end-to-end tests)."""
    import_name = {name: IMPORT_NAMES.get(name, name) for name in _runtime_deps()}
    by_env = {}
    for rule in rules.values():
        if rule["script"]:
            by_env.setdefault(rule["conda"], []).append(Path(rule["script"]))
    for env, scripts in by_env.items():
        allowed = {import_name[n] for n in _env_specs(Path(env)) if n in import_name}
        blocked = sorted(set(import_name.values()) - allowed)
        code = _BLOCKER + "\n" + "\n".join(_top_level_imports(s) for s in sorted(set(scripts)))
        result = subprocess.run([sys.executable, "-c", code, ",".join(blocked)], cwd=ROOT, capture_output=True,
                                text=True, timeout=300, check=False)
        assert result.returncode == 0, f"{Path(env).name} lacks what {[s.name for s in scripts]} import:\n" \
                                       f"{result.stderr[-3000:]}"


# -- the package from the workflow's own src/ ----------------------------------------------
def _bootstrap(script: Path) -> str:
    """The script's first statement after its docstring: the try block that imports ccdflow."""
    tree = ast.parse(script.read_text())
    node = tree.body[1]
    assert isinstance(node, ast.Try), f"{script.name}: the package bootstrap is not its first statement"
    return ast.get_source_segment(script.read_text(), node)


SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_every_script_starts_with_the_same_bootstrap():
    blocks = {script.name: _bootstrap(script) for script in SCRIPTS}
    assert len(set(blocks.values())) == 1, "the scripts' package bootstraps differ"
    block = next(iter(blocks.values()))
    assert "import ccdflow" in block and '"src"' in block and "__file__" in block


def _without_site(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -I -S``: no site-packages (so neither the installed nor the editable
    ccdflow), no PYTHONPATH, not even the current folder on sys.path."""
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bootstrap_finds_the_package_in_the_workflows_src(script, tmp_path):
    """A job whose environment lacks ccdflow (a conda env from envs/*.yaml) imports it
    from the src/ beside the workflow's scripts/, wherever the working directory is.
    Snakemake runs a script with ``__file__`` set to the script's own path."""
    plain = _without_site("import ccdflow", tmp_path)
    assert plain.returncode != 0 and "No module named 'ccdflow'" in plain.stderr  # the check means something
    code = (f"__file__ = {str(script)!r}\n" + _bootstrap(script) + "\n"
            "import ccdflow, ccdflow.paths\n"
            "print(ccdflow.__file__, ccdflow.__version__, ccdflow.paths.schema_path('config.schema.yaml'))")
    result = _without_site(code, tmp_path)
    assert result.returncode == 0, result.stderr
    where, version, schema = result.stdout.split()
    assert Path(where) == ROOT / "src" / "ccdflow" / "__init__.py"
    assert version == _version()  # from pyproject.toml: the source tree has no installed metadata
    assert Path(schema).is_file()


def test_bootstrap_keeps_an_installed_package(tmp_path):
    """Where ccdflow is installed (pip install -e ., the container image) the bootstrap
    changes nothing: sys.path is left as it was."""
    code = (f"__file__ = {str(SCRIPTS[0])!r}\nimport sys\nbefore = list(sys.path)\n" + _bootstrap(SCRIPTS[0])
            + "\nprint(sys.path == before)")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr


# -- what the workflow catalog and a packager read -------------------------------------------
def test_catalog_file_and_licence():
    catalog = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert set(usage) == {"mandatory-flags", "software-stack-deployment", "report"}
    assert set(usage["mandatory-flags"]) == {"desc", "flags"}
    assert set(usage["software-stack-deployment"]) == {"conda", "apptainer", "apptainer+conda"}
    assert all(isinstance(v, bool) for v in usage["software-stack-deployment"].values())
    assert (ROOT / "config" / "README.md").is_file()
    licence = (ROOT / "LICENSE").read_text()
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "BSD-3-Clause"
    assert licence.startswith("BSD 3-Clause License") and "the ccdflow developers" in licence
