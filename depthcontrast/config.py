"""Load config.yaml, validate it against the schema, fill defaults, and report errors in one line: the key, what is
wrong, and the file that sets it (of the files and --config overrides Snakemake merged)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from depthcontrast.architectures import (
    SCHEMA_ENUMS,
    default_export_targets,
    describe_encoders,
    run_encoders,
    source_representation,
    what_target_needs,
)
from depthcontrast.errors import ConfigError
from depthcontrast.sweeps import expand_sweeps
from depthcontrast.yaml_numbers import yaml_number_hint

SCHEMA_FILE = "config.schema.yaml"


ENUM_FROM_TABLE = "x-enum"  # in the schema file: `x-enum: <SCHEMA_ENUMS key>` stands for that table's names


def load_schema() -> dict[str, Any]:
    """The config schema shipped inside the package, its `x-enum` tables filled in (a fresh copy each call)."""
    return copy.deepcopy(_parsed_schema())


@functools.cache
def _parsed_schema() -> dict[str, Any]:
    """The schema file parsed once per process (with libyaml when PyYAML has it: 10x faster)."""
    text = resources.files("depthcontrast.schemas").joinpath(SCHEMA_FILE).read_text()
    return _with_enums(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def _with_enums(node: Any) -> Any:
    """`node` with every `x-enum: <table>` replaced by `enum: [<the table's names>]` (architectures.SCHEMA_ENUMS)."""
    if isinstance(node, list):
        return [_with_enums(item) for item in node]
    if not isinstance(node, dict):
        return node
    filled = {key: _with_enums(value) for key, value in node.items() if key != ENUM_FROM_TABLE}
    if ENUM_FROM_TABLE in node:
        filled["enum"] = list(SCHEMA_ENUMS[node[ENUM_FROM_TABLE]])
    return filled


def schema_part(*keys: str) -> Any:
    """The loaded schema's node at `keys`, e.g. schema_part("$defs", "backbone_ssg", "properties", "npoints")."""
    node: Any = _parsed_schema()
    for key in keys:
        node = node[key]
    return copy.deepcopy(node)


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


Key = tuple[str | int, ...]  # a path into the config: ("pretrain", "demo", "optimizer", "lr")


class ConfigKeyError(ConfigError):
    """A ConfigError about one key: `key` is where the message points, `blame` the key whose value is at fault
    (for an unknown key: the unknown key itself), `detail` the message after the key, `hint` what to write."""

    def __init__(self, source: str, key: Key, detail: str, blame: Key | None = None, hint: str = ""):
        super().__init__(f"{source}: {dotted(key)}: {detail}{hint}")
        self.source, self.key, self.detail, self.hint = source, key, detail, hint
        self.blame = key if blame is None else blame

    def __reduce__(self) -> tuple[type, tuple[Any, ...]]:  # pickles (into and out of worker processes) whole
        return type(self), (self.source, self.key, self.detail, self.blame, self.hint)

    def with_source(self, source: str, hint: str | None = None) -> ConfigKeyError:
        """The same error, naming another source (the one file that sets the key), with another hint if given."""
        return ConfigKeyError(source, self.key, self.detail, self.blame, self.hint if hint is None else hint)


def dotted(key: Key) -> str:
    """`pretrain.demo.optimizer.lr`; the empty key is `<top level>`."""
    return ".".join(str(part) for part in key) or "<top level>"


def _type_hint(error: ValidationError) -> str:
    """The YAML-number hint of a type error where a number or an integer was expected."""
    expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
    if "number" in expected:
        return yaml_number_hint(error.instance)
    return yaml_number_hint(error.instance, integer=True) if "integer" in expected else ""


def _schema_error(error: ValidationError, source: str) -> ConfigKeyError:
    """One line for the schema error: the key, what is wrong and, where it helps, what is allowed."""
    key = tuple(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        keys = ", ".join(repr(k) for k in extra) or "?"
        blame = (*key, extra[0]) if extra else key
        return ConfigKeyError(source, key, f"unknown key {keys} (allowed: {', '.join(allowed)})", blame)
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        return ConfigKeyError(source, key, f"{error.instance!r} is not allowed (allowed: {allowed})")
    if error.validator == "type":
        return ConfigKeyError(source, key, error.message, hint=_type_hint(error))
    return ConfigKeyError(source, key, error.message)


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Return a validated deep copy of `config` with defaults filled and sweeps expanded into `pretrain:` runs;
    raise ConfigError in one line."""
    filled = copy.deepcopy(config)
    validator = _DefaultFillingValidator(load_schema())
    errors = list(validator.iter_errors(filled))
    if errors:
        raise _schema_error(_deepest(errors), source)
    expand_sweeps(filled, source)  # the sweeps' runs join `pretrain:` and are checked like the others
    filled.pop("sweeps")
    # a second pass: defaults filled inside conditional branches, and the sweeps' runs, are checked only now
    errors = list(_DefaultFillingValidator(load_schema()).iter_errors(filled))
    if errors:
        raise _schema_error(_deepest(errors), source)
    for run in filled["pretrain"].values():
        run.setdefault("export_targets", default_export_targets(run_encoders(run)))
    _check_references(filled, source)
    return filled


def validate_settings(settings: dict[str, Any], source: str) -> dict[str, Any]:
    """A piece of a config (a stage's settings file: any top-level blocks, none required) validated in place
    against the schema with defaults filled, in two passes like validate_config; an error is one line."""
    schema = load_schema()
    schema.pop("required", None)
    schema["properties"]["datasets"].pop("minProperties", None)
    _fill_and_check(schema, settings, source)
    return settings


def validate_part(value: Any, definition: str, key: Key, source: str) -> Any:
    """A validated deep copy of one block of a config, e.g. a checkpoint's stored `backbone` block, against the
    schema at `definition` (a JSON pointer such as "#/$defs/pretrain_run/properties/backbone"), defaults filled;
    an error is one line naming `key` (where the block sits in a config)."""
    schema = load_schema()
    filled = copy.deepcopy(value)
    try:
        _fill_and_check({"$ref": definition, "$defs": schema["$defs"]}, filled, source)
    except ConfigKeyError as error:
        raise ConfigKeyError(source, (*key, *error.key), error.detail, (*key, *error.blame), error.hint) from None
    return filled


def _fill_and_check(schema: dict[str, Any], instance: Any, source: str) -> None:
    """Fill `instance`'s defaults from `schema` and check it, twice: the second pass checks the defaults filled
    inside conditional branches; an error is one line (ConfigKeyError)."""
    for _ in range(2):
        errors = list(_DefaultFillingValidator(schema).iter_errors(instance))
        if errors:
            raise _schema_error(_deepest(errors), source)


def _check_references(config: dict[str, Any], source: str) -> None:
    """Cross-key checks the schema cannot express: runs and evaluation tasks name configured datasets, a run's
    export targets fit its encoders, its time-limit signal comes before its time limit, and a dataset's
    max_points is not below its min_points."""
    known = ", ".join(sorted(config["datasets"]))
    for name, dataset in config["datasets"].items():
        _check_point_limits(name, dataset["preprocess"], source)
    for task, settings in config["evaluate"]["tasks"].items():
        for key in ("dataset", "train_dataset"):
            if key in settings and settings[key] not in config["datasets"]:
                detail = f"{settings[key]!r} is not a configured dataset: {known}"
                raise ConfigKeyError(source, ("evaluate", "tasks", task, key), detail)
    for job_name, job in config["external"].items():
        if job["run"] not in config["pretrain"]:
            raise ConfigKeyError(source, ("external", job_name, "run"), f"{job['run']!r} is not a pretraining run")
        if job["target"] not in config["pretrain"][job["run"]]["export_targets"]:
            detail = f"{job['target']!r} is not in pretrain.{job['run']}.export_targets"
            raise ConfigKeyError(source, ("external", job_name, "target"), detail)
    for run, settings in config["pretrain"].items():
        for name in settings.get("evaluation", {}).get("tasks", []):
            if name not in config["evaluate"]["tasks"]:
                detail = f"{name!r} is not an evaluation task ({', '.join(sorted(config['evaluate']['tasks']))})"
                raise ConfigKeyError(source, ("pretrain", run, "evaluation", "tasks"), detail)
        for name in settings["datasets"]:
            if name not in config["datasets"]:
                detail = f"{name!r} is not a configured dataset ({known})"
                raise ConfigKeyError(source, ("pretrain", run, "datasets"), detail)
        _check_encoders(run, settings, source)
        resources = settings["resources"]
        if resources["signal_before_limit_s"] >= 60 * resources["runtime"]:
            detail = (
                f"signal_before_limit_s ({resources['signal_before_limit_s']}) must be shorter than runtime "
                f"({resources['runtime']} min), or every attempt stops at once"
            )
            raise ConfigKeyError(source, ("pretrain", run, "resources"), detail)


def _check_point_limits(name: str, preprocess: dict[str, Any], source: str) -> None:
    """max_points (null: keep all) is at least min_points: samples are checked against min_points, then cut."""
    low, high = preprocess["min_points"], preprocess["max_points"]
    if high is not None and high < low:
        detail = (
            f"max_points ({high}) is below min_points ({low}): every sample would be cut below the minimum; "
            "raise max_points (or null) or lower min_points"
        )
        raise ConfigKeyError(source, ("datasets", name, "preprocess"), detail)


def _check_encoders(run: str, settings: dict[str, Any], source: str) -> None:
    """The voxel representation has a voxel encoder, and every export target can be made from the run's
    encoders."""
    if "voxel" in settings["representations"] and not settings.get("voxel_backbone"):
        detail = "representations lists voxel, but the run has no voxel_backbone block"
        raise ConfigKeyError(source, ("pretrain", run), detail, blame=("pretrain", run, "representations"))
    encoders = run_encoders(settings)
    for target in settings["export_targets"]:
        if source_representation(target, encoders) is None:
            detail = (
                f"{target!r} needs {what_target_needs(target)}, but the run trains {describe_encoders(encoders)}; "
                "drop the target or change the backbone"
            )
            raise ConfigKeyError(source, ("pretrain", run, "export_targets"), detail)


def _deepest(errors: list[ValidationError]) -> ValidationError:
    """The most specific error: descend into if/then and allOf branches to the leaf that failed."""
    error = best_match(errors)
    while error.context:
        error = best_match(error.context)
    return error


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The YAML mapping in `path` (a config or settings file); a ConfigError in one line when it is missing,
    not YAML or not a mapping."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    return validate_config(read_yaml_mapping(path, "config file"), source=str(path))


WORKFLOW_OVERRIDES = "--config overrides"
# Snakemake's --config reads a top-level value as a number, but everything inside {...} as text
OVERRIDE_TEXT_HINT = " (--config reads values inside {{...}} as text: set {key} in a --configfile)"


@dataclass(frozen=True)
class ConfigLayer:
    """One source of a merged config: a config file, or the command line's --config overrides."""

    name: str
    values: Mapping[str, Any]


def validate_layered_config(config: dict[str, Any], layers: Sequence[ConfigLayer]) -> dict[str, Any]:
    """validate_config for `config` merged from `layers` (lowest precedence first): an error about one key names
    the layer that sets it, any other error names them all."""
    everything = " + ".join(layer.name for layer in layers) or "config"
    try:
        return validate_config(config, source=everything)
    except ConfigKeyError as error:
        layer = _defining_layer(error.blame, layers)
        override_text = layer == WORKFLOW_OVERRIDES and error.hint
        hint = OVERRIDE_TEXT_HINT.format(key=dotted(_without_indices(error.key))) if override_text else None
        raise error.with_source(layer or everything, hint) from None


def _without_indices(key: Key) -> Key:
    """`key` up to the list it points into: evaluate.seeds.0 -> evaluate.seeds."""
    while key and isinstance(key[-1], int):
        key = key[:-1]
    return key


def _defining_layer(key: Key, layers: Sequence[ConfigLayer]) -> str | None:
    """The highest-precedence layer that sets `key`; None when none does (a default, a sweep's run, the top)."""
    if not key:
        return None
    return next((layer.name for layer in reversed(layers) if _sets(layer.values, key)), None)


def _sets(values: Any, key: Key) -> bool:
    """Whether the nested mappings and lists `values` hold `key`."""
    for part in key:
        in_list = isinstance(values, list) and isinstance(part, int) and part < len(values)
        if not (in_list or (isinstance(values, Mapping) and part in values)):
            return False
        values = values[part]
    return True


def workflow_config_layers(workflow: Any) -> list[ConfigLayer]:
    """The layers Snakemake merged into `config`, lowest precedence first: the Snakefile's `configfile:` (unless
    --replace-workflow-config), each --configfile in order, then the --config overrides when there are any."""
    given = [Path(path).absolute() for path in workflow.overwrite_configfiles]
    settings = workflow.config_settings
    own = [] if settings.replace_workflow_config else [
        Path(path).absolute() for path in workflow.configfiles if Path(path).absolute() not in given
    ]  # fmt: skip
    layers = [ConfigLayer(_shown_path(path), yaml.safe_load(path.read_text()) or {}) for path in [*own, *given]]
    if settings.config:
        layers.append(ConfigLayer(WORKFLOW_OVERRIDES, settings.config))
    return layers


def _shown_path(path: Path) -> str:
    """`path` relative to the working directory when it lies below it, else absolute."""
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def validate_workflow_config(config: dict[str, Any], workflow: Any) -> dict[str, Any]:
    """The Snakefile's validation: validate_layered_config on the layers of Snakemake's `workflow`."""
    return validate_layered_config(config, workflow_config_layers(workflow))
