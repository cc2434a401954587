"""Load config.yaml, validate it against the schema, fill defaults, and report errors in one line."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from depthcontrast.architectures import (
    default_export_targets,
    describe_encoders,
    run_encoders,
    source_format,
    what_target_needs,
)
from depthcontrast.errors import ConfigError
from depthcontrast.sweeps import expand_sweeps

SCHEMA_FILE = "config.schema.yaml"


def load_schema() -> dict[str, Any]:
    """The config schema shipped inside the package."""
    text = resources.files("depthcontrast.schemas").joinpath(SCHEMA_FILE).read_text()
    return yaml.safe_load(text)


def _with_defaults(validator_class: type) -> type:
    """A validator class that writes each property's `default` into the instance as it validates."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if isinstance(subschema, dict) and "$ref" in subschema and "default" not in subschema:
                    subschema = validator._resolver.lookup(subschema["$ref"]).contents
                if isinstance(subschema, dict) and "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultFillingValidator = _with_defaults(Draft202012Validator)


def _key_path(error: ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _one_line(error: ValidationError, source: str) -> str:
    where = _key_path(error)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        keys = ", ".join(repr(k) for k in extra) or "?"
        return f"{source}: {where}: unknown key {keys} (allowed: {', '.join(allowed)})"
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return f"{source}: {where}: {error.instance!r} is not allowed (allowed: {allowed})"
    if error.validator == "required":
        return f"{source}: {where}: {error.message}"
    return f"{source}: {where}: {error.message}"


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated deep copy of `config` with defaults filled and sweeps expanded into `pretrain:` runs;
    raise ConfigError in one line."""
    filled = copy.deepcopy(config)
    validator = _DefaultFillingValidator(load_schema())
    errors = list(validator.iter_errors(filled))
    if errors:
        raise ConfigError(_one_line(_deepest(errors), source))
    expand_sweeps(filled, source)  # the sweeps' runs join `pretrain:` and are checked like the others
    filled.pop("sweeps")
    # a second pass: defaults filled inside conditional branches, and the sweeps' runs, are checked only now
    errors = list(_DefaultFillingValidator(load_schema()).iter_errors(filled))
    if errors:
        raise ConfigError(_one_line(_deepest(errors), source))
    for run in filled["pretrain"].values():
        run.setdefault("export_targets", default_export_targets(run_encoders(run)))
    _check_references(filled, source)
    return filled


def _check_references(config: dict[str, Any], source: str) -> None:
    """Cross-key checks the schema cannot express: runs and evaluation tasks name configured datasets, a run's
    export targets fit its encoders, and its time-limit signal comes before its time limit."""
    for task, settings in config["evaluate"]["tasks"].items():
        if settings["dataset"] not in config["datasets"]:
            known = ", ".join(sorted(config["datasets"]))
            name = settings["dataset"]
            raise ConfigError(f"{source}: evaluate.tasks.{task}.dataset: {name!r} is not a configured dataset: {known}")
    for job_name, job in config["external"].items():
        if job["run"] not in config["pretrain"]:
            raise ConfigError(f"{source}: external.{job_name}.run: {job['run']!r} is not a pretraining run")
        if job["target"] not in config["pretrain"][job["run"]]["export_targets"]:
            raise ConfigError(
                f"{source}: external.{job_name}.target: {job['target']!r} is not in "
                f"pretrain.{job['run']}.export_targets"
            )
    for run, settings in config["pretrain"].items():
        for name in settings["datasets"]:
            if name not in config["datasets"]:
                known = ", ".join(sorted(config["datasets"]))
                raise ConfigError(f"{source}: pretrain.{run}.datasets: {name!r} is not a configured dataset ({known})")
        _check_encoders(run, settings, source)
        resources = settings["resources"]
        if resources["signal_before_limit_s"] >= 60 * resources["runtime"]:
            raise ConfigError(
                f"{source}: pretrain.{run}.resources: signal_before_limit_s ({resources['signal_before_limit_s']}) "
                f"must be shorter than runtime ({resources['runtime']} min), or every attempt stops at once"
            )


def _check_encoders(run: str, settings: dict[str, Any], source: str) -> None:
    """A voxel format has a voxel encoder, and every export target can be made from the run's encoders."""
    if "voxel" in (settings.get("formats") or []) and not settings.get("voxel_backbone"):
        raise ConfigError(f"{source}: pretrain.{run}: formats lists voxel, but the run has no voxel_backbone block")
    encoders = run_encoders(settings)
    for target in settings["export_targets"]:
        if source_format(target, encoders) is None:
            raise ConfigError(
                f"{source}: pretrain.{run}.export_targets: {target!r} needs {what_target_needs(target)}, but the run "
                f"trains {describe_encoders(encoders)}; drop the target or change the backbone"
            )


def _deepest(errors: list[ValidationError]) -> ValidationError:
    """The most specific error: descend into if/then and allOf branches to the leaf that failed."""
    error = best_match(errors)
    while error.context:
        error = best_match(error.context)
    return error


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return validate_config(raw, source=str(path))
