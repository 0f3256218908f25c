"""Config and profile schemas describe every key, and a config error reads in a few lines."""

import copy

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from workflow_run import copy_workflow, run_snakemake

from ccdflow.configcheck import validate_config
from ccdflow.instrument import validate_profile

SCHEMAS = ("config.schema.yaml", "instrument.schema.yaml")


def _properties(schema, path=""):
    """(key path, sub-schema) of every property at every depth: nested objects, array
    items, anyOf/oneOf alternatives and $defs."""
    if not isinstance(schema, dict):
        return
    for key, sub in (schema.get("properties") or {}).items():
        where = f"{path}/{key}" if path else key
        yield where, sub
        yield from _properties(sub, where)
    for keyword in ("items", "additionalProperties"):
        yield from _properties(schema.get(keyword), f"{path}[]")
    for keyword in ("anyOf", "oneOf", "allOf"):
        for alternative in schema.get(keyword) or ():
            yield from _properties(alternative, path)
    for name, definition in (schema.get("$defs") or {}).items():
        yield from _properties(definition, f"$defs/{name}")


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_schema_key_has_a_description(root, name):
    schema = yaml.safe_load((root / "workflow" / "schemas" / name).read_text())
    keys = list(_properties(schema))
    assert len(keys) > 50
    bare = [path for path, sub in keys if not (isinstance(sub, dict) and str(sub.get("description", "")).strip())]
    assert bare == [], f"{name}: keys without a description: {bare}"


@pytest.fixture
def config(root):
    return yaml.safe_load((root / "config" / "config.yaml").read_text())


def _error(root, config, configfiles=()) -> str:
    with pytest.raises(WorkflowError) as info:
        validate_config(config, root / "workflow" / "schemas" / "config.schema.yaml", configfiles)
    message = str(info.value)
    assert len(message.splitlines()) <= 6, message
    assert "Failed validating" not in message and "'properties'" not in message, message
    return message


@pytest.mark.parametrize(
    "change, path, given, allowed",
    [
        # a wrong enum value
        (lambda c: c["lightcurves"].update(detrend={"criterion": "bix"}),
         "lightcurves/detrend/criterion", "'bix'", "one of 'bic', 'aic'"),
        # a wrong type
        (lambda c: c["batch"].update(size="ten"), "batch/size", "'ten'", "an integer >= 1"),
        # an unknown key: the keys allowed there, and the nearest one
        (lambda c: c["batch"].update(sise=3), "batch/sise", "3 (an unknown key)", "keys of batch: size"),
        (lambda c: c.update(calibraton={}), "calibraton", "{}", "did you mean calibration?"),
        # below a minimum, above a maximum, not above an exclusive minimum
        (lambda c: c["batch"].update(size=0), "batch/size", "0", "an integer >= 1"),
        (lambda c: c["night"].update(boundary_hour=25), "night/boundary_hour", "25", "a number >= 0 and <= 24"),
        (lambda c: c.update(calibration={"overscan": {"sigma": 0}}), "calibration/overscan/sigma", "0",
         "a number > 0"),
        # in a list: the item's index; a missing key; neither of two alternatives
        (lambda c: c["raw"][0].pop("instrument"), "raw/0/instrument", "nothing (a required key)", "a string"),
        (lambda c: c["lightcurves"].update(targets=[{"name": "t", "ra": 12.0}]), "lightcurves/targets/0",
         '"ra": 12.0', "keys ra + dec, or keys x + y"),
        (lambda c: c["lightcurves"].update(targets=[{"name": "t", "x": 1, "y": 2, "pixels": "ds9"}]),
         "lightcurves/targets/0/pixels", "'ds9'", "one of 'raw', 'calibrated', 'numpy'"),
    ],
)
def test_config_error_names_key_value_and_what_is_allowed(root, config, change, path, given, allowed):
    change(config)
    message = _error(root, config)
    headline, given_line, allowed_line = message.splitlines()[:3]
    assert headline == f"config error at {path}:"
    assert given_line.startswith("  given:") and given in given_line
    assert allowed_line.startswith("  allowed:") and allowed in allowed_line


def test_config_error_says_what_the_key_is_for(root, config):
    config["batch"]["size"] = 0
    assert "meaning: frames per job" in _error(root, config)


def test_config_error_names_the_file_that_holds_the_key(root, config, tmp_path):
    first, second = tmp_path / "base.yaml", tmp_path / "night.yaml"
    first.write_text(yaml.safe_dump(config))
    second.write_text(yaml.safe_dump({"photometry": {"align": {"kind": "projective"}}}))
    merged = copy.deepcopy(config)
    merged["photometry"] = {"align": {"kind": "projective"}}
    message = _error(root, merged, [first, second])
    headline = message.splitlines()[0]  # the second file: later files win
    assert headline.startswith("config error in ") and headline.endswith("night.yaml at photometry/align/kind:")
    merged = copy.deepcopy(config)
    merged["batch"] = {"size": -1}  # in neither file: it came from the command line
    assert "in --config (command line) at batch/size" in _error(root, merged, [first, second])


def test_a_valid_config_still_gets_its_defaults(root, config):
    config.pop("batch")
    validate_config(config, root / "workflow" / "schemas" / "config.schema.yaml")
    assert config["batch"]["size"] == 25
    assert config["calibration"]["combine"]["mem_budget_mb"] == 1024
    assert config["night"]["utc_offset_hours"] is None


def test_profile_errors_are_one_line_each(profiles):
    spec = copy.deepcopy(profiles["arcsat"].spec)
    spec["gain"] = {"keyword": "GAIN", "defualt": 1.3}           # a source written as a mapping
    spec["frame_type"]["default"] = "sciense"                      # an enum through a $ref, or null
    spec["frame_type"]["rules"] = [{"field": "filename", "pattern": "*"}]  # a required key through a $ref
    with pytest.raises(ValueError) as info:
        validate_profile(spec, "broken.yaml")
    lines = str(info.value).splitlines()
    assert lines[0] == "instrument profile broken.yaml is invalid:"
    assert lines[1:] == [
        "  frame_type/default: given 'sciense'; allowed: one of 'bias', 'dark', 'flat', 'science', or null",
        ("  frame_type/rules/0/type: given nothing (a required key); allowed: one of 'bias', 'dark', 'flat', "
         "'science'"),
        ("  gain/defualt: given 1.3 (an unknown key); allowed: keys of gain: keyword, keywords, value, default, "
         "estimated (did you mean default?)"),
    ]


@pytest.mark.slow
def test_the_workflow_prints_the_short_message(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"campaign": "bad", "raw": [{"path": str(tmp_path), "instrument": "simulator"}],
                                      "lightcurves": {"detrend": {"criterion": "bix"}}}))
    result = run_snakemake("--dry-run", config=config, check=False, cwd=work, timeout=300)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert f"config error in {config} at lightcurves/detrend/criterion:" in output
    assert "allowed: one of 'bic', 'aic'" in output
    assert "Failed validating" not in output and "File " not in output
