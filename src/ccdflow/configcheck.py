"""Readable config errors: the key, the value given and what is allowed.

A failed ``snakemake.utils.validate`` reports jsonschema's ``ValidationError``,
whose text holds the whole failing sub-schema (~50 lines for an unknown key in
a large block). :func:`explain` turns one error into a few lines::

    config error in my_night.yaml at lightcurves/detrend/criterion:
      given:   'bix'
      allowed: one of 'bic', 'aic'
      meaning: information criterion that chooses the terms (and weights the ...)

:func:`readable_config_errors` wraps the workflow's own ``validate`` call, which
still fills in the defaults (``set_default=True``); :func:`validate_config` is the
same outside a Snakefile; :func:`error_line` is the one-line form that instrument
profiles list (:func:`ccdflow.instrument.validate_profile`).
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

_TYPE_NAMES = {"boolean": "true or false", "array": "a list", "object": "a mapping", "string": "a string",
               "number": "a number", "integer": "an integer", "null": "null"}
_BOUNDS = (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
_WIDTH = 100  # longest value or description shown


@dataclass(frozen=True)
class Problem:
    """One validation error, reduced to what a user needs to fix it."""

    path: str          # key path, e.g. "lightcurves/detrend/criterion" ("" for the top level)
    given: str         # the value given, as YAML shows it
    allowed: str       # what the schema allows there
    meaning: str = ""  # the key's description in the schema, shortened


def _shorten(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _WIDTH else text[: _WIDTH - 3].rstrip() + "..."


def _show(value: Any) -> str:
    """A value as a YAML user wrote it (null, true, 'text'), cut to a readable length."""
    return _shorten(repr(value) if isinstance(value, str) else json.dumps(value, default=str))


def _join(path) -> str:
    return "/".join(str(part) for part in path)


def _resolve(schema, root: dict | None):
    """A local ``$ref`` (``#/$defs/...``) replaced by what it points to (the referring
    schema's own keywords, its description, win); unchanged without ``root``."""
    if not (isinstance(schema, dict) and root and str(schema.get("$ref", "")).startswith("#/")):
        return schema
    target = root
    for part in schema["$ref"][2:].split("/"):
        target = target.get(part, {}) if isinstance(target, dict) else {}
    return {**_resolve(target, root), **{k: v for k, v in schema.items() if k != "$ref"}}


def _allowed(schema, root: dict | None = None) -> str:
    """What a (sub-)schema accepts, in words: the enum, type and bounds, pattern, items."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return "nothing" if schema is False else "anything"
    if "enum" in schema:
        return "one of " + ", ".join(_show(v) for v in schema["enum"])
    if "const" in schema:
        return f"exactly {_show(schema['const'])}"
    for keyword in ("oneOf", "anyOf"):
        if keyword in schema:
            return ", or ".join(_allowed(alternative, root) for alternative in schema[keyword])
    if "$ref" in schema:
        return f"a {schema['$ref'].rsplit('/', 1)[-1]} (see the schema)"
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    text = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    bounds = [f"{sign} {schema[key]}" for key, sign in _BOUNDS if key in schema]
    if bounds:
        text = f"{text or 'a number'} {' and '.join(bounds)}"
    if "pattern" in schema:
        text = f"{text or 'a string'} matching {schema['pattern']}"
    if isinstance(schema.get("items"), dict):
        text = f"a list of: {_allowed(schema['items'], root)}"
    low, high = schema.get("minItems"), schema.get("maxItems")
    if (low, high) != (None, None):
        count = (f"{low}" if low == high else f"at least {low}" if high is None
                 else f"at most {high}" if low is None else f"{low} to {high}")
        text += f" ({count} item{'' if count.split()[-1] == '1' else 's'})"
    if "properties" in schema and text in ("", _TYPE_NAMES["object"]):
        text = "a mapping with keys " + ", ".join(schema["properties"])
    if not text and "required" in schema:
        text = "keys " + " + ".join(schema["required"])
    return text or "anything"


def _branches(error) -> dict[int, list]:
    """anyOf/oneOf: the errors of each alternative, by its index."""
    branches: dict[int, list] = {}
    for sub in error.context or ():
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    return branches


def _focus(error):
    """The error worth explaining. Inside anyOf/oneOf, when the value's type fits exactly
    one alternative that declares a type (an instrument source written as a mapping,
    with a mistyped key), that alternative's own failure; else the error itself."""
    while error.validator in ("anyOf", "oneOf"):
        fitting = [errors for index, errors in _branches(error).items()
                   if isinstance(error.validator_value[index], dict) and "type" in error.validator_value[index]
                   and not any(e.validator == "type" and not e.relative_path for e in errors)]
        if len(fitting) != 1:
            break
        error = fitting[0][0]
    return error


def _alternatives(error, root: dict | None) -> str:
    """anyOf/oneOf: each alternative in words (a ``$ref`` resolved through ``root`` or,
    without it, through the schema its own failure was checked against)."""
    checked = {index: errors[0].schema for index, errors in _branches(error).items() if not errors[0].relative_path}
    words = []
    for index, alternative in enumerate(error.validator_value):
        if isinstance(alternative, dict) and "$ref" in alternative and not root and index in checked:
            alternative = checked[index]
        words.append(_allowed(alternative, root))
    return ", or ".join(words)


def _meaning(schema) -> str:
    return _shorten(schema.get("description", "")) if isinstance(schema, dict) else ""


def _unknown_keys(error) -> list:
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    return [key for key in error.instance if key not in known]


def problem(error, root: dict | None = None) -> Problem:
    """The key path, the value given and what is allowed, of one jsonschema
    ``ValidationError``; ``root`` (the whole schema) resolves local ``$ref``\\ s."""
    error = _focus(error)
    path = list(error.absolute_path)
    schema = _resolve(error.schema, root) if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = list(schema.get("properties", {}))
        extra = _unknown_keys(error)
        if len(extra) == 1:
            given = f"{_show(error.instance[extra[0]])} (an unknown key)"
        else:
            given = ", ".join(f"{key}: {_show(error.instance[key])}" for key in extra) + " (unknown keys)"
        allowed = f"keys of {_join(path)}: " if path else "top-level keys: "
        allowed += ", ".join(known) or "none"
        close = difflib.get_close_matches(str(extra[0]), known, n=1) if extra else []
        if close:
            allowed += f" (did you mean {close[0]}?)"
        return Problem(_join(path + extra[:1]), _shorten(given), allowed)
    if error.validator == "required":
        missing = next((key for key in error.validator_value if key not in error.instance), "")
        sub = _resolve(schema.get("properties", {}).get(missing, {}), root)
        return Problem(_join([*path, missing]), "nothing (a required key)", _allowed(sub, root), _meaning(sub))
    if error.validator in ("anyOf", "oneOf"):
        return Problem(_join(path), _show(error.instance), _alternatives(error, root), _meaning(schema))
    allowed = _allowed(schema, root)
    if allowed == "anything":
        allowed = _shorten(error.message)
    return Problem(_join(path), _show(error.instance), allowed, _meaning(schema))


def explain(error, origin: str | None = None, root: dict | None = None, what: str = "config") -> str:
    """At most four lines for one config error: the key path and the file it is in,
    the value given, what is allowed there, and what the key is for."""
    found = problem(error, root)
    where = f" in {origin}" if origin else ""
    lines = [f"{what} error{where} at {found.path or '(top level)'}:",
             f"  given:   {found.given}",
             f"  allowed: {found.allowed}"]
    if found.meaning:
        lines.append(f"  meaning: {found.meaning}")
    return "\n".join(lines)


def error_line(error, root: dict | None = None) -> str:
    """One line for one error, ``key/path: ...``, as an instrument profile's list of
    errors shows them. A pattern with a description reads ``'<value>' is not <description>``."""
    focused = _focus(error)
    schema = focused.schema if isinstance(focused.schema, dict) else {}
    if focused.validator == "pattern" and schema.get("description"):
        where = _join(focused.absolute_path) or "(top level)"
        return f"{where}: {focused.instance!r} is not {' '.join(schema['description'].split())}"
    found = problem(focused, root)
    return f"{found.path or '(top level)'}: given {found.given}; allowed: {found.allowed}"


_ANY = object()


def _lookup(error) -> tuple[list, Any]:
    """The key path a config file holds for this error and the value it holds there
    (for a missing key: its parent, any value)."""
    error = _focus(error)
    path = list(error.absolute_path)
    if error.validator == "required":
        return path, _ANY
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        extra = _unknown_keys(error)[:1]
        return path + extra, (error.instance[extra[0]] if extra else _ANY)
    return path, error.instance


def _holds(data, path, value) -> bool:
    for part in path:
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if not (in_list or (isinstance(data, dict) and part in data)):
            return False
        data = data[part]
    return value is _ANY or data == value


def _display(path) -> str:
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def origin_of(error, configfiles: Iterable[str | os.PathLike]) -> str | None:
    """Which config file gave the failing value: the last of ``configfiles`` that holds
    it (later files win in Snakemake); ``--config`` when none does; None without files."""
    files = [Path(f) for f in configfiles]
    path, value = _lookup(error)
    for file in reversed(files):
        try:
            data = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if _holds(data, path, value):
            return _display(file)
    return "--config (command line)" if files else None


def _validation_error(err: BaseException):
    """The jsonschema error behind Snakemake's ``WorkflowError``, which keeps only its
    text but is raised while handling it (the error is its ``__context__``)."""
    import jsonschema

    while err is not None:
        if isinstance(err, jsonschema.ValidationError):
            return err
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def readable_config_errors(configfiles: Iterable[str | os.PathLike] = (),
                           schema: str | os.PathLike | None = None) -> Iterator[None]:
    """Around ``snakemake.utils.validate(config, schema)``: a config error becomes a
    ``WorkflowError`` of a few lines (:func:`explain`) naming the file among
    ``configfiles`` (in a Snakefile: ``workflow.configfiles``) that holds the key.
    Validation itself, and the defaults it fills in, stay Snakemake's. ``schema``
    (the schema file) is only needed to resolve ``$ref``\\ s in the message."""
    from snakemake.exceptions import WorkflowError

    configfiles = list(configfiles)
    try:
        yield
    except WorkflowError as err:
        error = _validation_error(err)
        if error is None:
            raise
        root = yaml.safe_load(Path(schema).read_text()) if schema else None
        # the same error re-raised with the new text: its traceback still ends in
        # Snakemake's validate, so Snakemake prints no traceback lines under it
        err.args = (explain(error, origin_of(error, configfiles), root),)
        raise


def validate_config(config: dict, schema: str | os.PathLike,
                    configfiles: Iterable[str | os.PathLike] = ()) -> dict:
    """Validate ``config`` against the schema file and fill in its defaults, as the
    workflow does; an error raises ``WorkflowError`` with :func:`explain`'s message."""
    from snakemake.utils import validate

    with readable_config_errors(configfiles, schema):
        validate(config, str(Path(schema).resolve()), set_default=True)
    return config
