"""A default lives in the schema: every code constant or constructor default that repeats one equals the schema's,
and every table the schema names (encoders, export targets, augmentations, presets) is the code's table. Each test
here fails when the code and the schema disagree."""

from __future__ import annotations

import dataclasses
import inspect
from importlib import resources
from typing import Any

import pytest
import yaml

from depthcontrast import method
from depthcontrast.architectures import (
    ARCHITECTURES,
    EXPORT_TARGETS,
    KNOWN_TARGETS,
    SCHEMA_ENUMS,
    architectures_of,
)
from depthcontrast.config import load_schema, schema_part
from depthcontrast.data.augment import PRESETS, TRANSFORMS
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.voxelize import VoxelGrid
from depthcontrast.export.targets import EXPORTERS, VOXEL_EXPORTERS
from depthcontrast.models.encoders import BACKBONES, ENCODERS, VOXEL_ENCODERS, VOXEL_HEAD_IN
from depthcontrast.models.heads import ORIGINAL_HEAD_DIMS, ORIGINAL_MSG_HEAD_DIMS, PointNetEncoder
from depthcontrast.models.pointnet2 import PointNet2SSG, fp_width
from depthcontrast.models.pointnet2_msg import PointNet2MSG
from depthcontrast.specs import POINT_BACKBONES, LossSpec, VoxelBackbone, derived_head_dims, loss_term_defaults

RUN = ("$defs", "pretrain_run", "properties")


def frozen(value: Any) -> Any:
    return tuple(frozen(item) for item in value) if isinstance(value, (list, tuple)) else value


def defaults(*keys: str) -> dict[str, Any]:
    """The `default` of every property of the schema object at `keys`."""
    properties = schema_part(*keys, "properties")
    return {name: sub["default"] for name, sub in properties.items() if isinstance(sub, dict) and "default" in sub}


def constructor_defaults(cls: type) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


# ----------------------------------------------------------------------------------- tables
def test_the_schemas_encoder_and_target_enums_are_the_architecture_tables():
    schema = load_schema()
    run = schema["$defs"]["pretrain_run"]["properties"]
    assert run["backbone"]["properties"]["name"]["enum"] == list(architectures_of("point"))
    assert run["voxel_backbone"]["properties"]["name"]["enum"] == list(architectures_of("voxel"))
    assert run["representations"]["items"]["enum"] == ["point", "voxel"]
    assert run["export_targets"]["items"]["enum"] == list(KNOWN_TARGETS)
    assert schema["$defs"]["external_job"]["properties"]["target"]["enum"] == list(KNOWN_TARGETS)
    assert "x-enum" not in _keys(schema)


def _keys(node: Any) -> set[str]:
    if isinstance(node, list):
        return {key for item in node for key in _keys(item)}
    return {key for name, value in node.items() for key in {name} | _keys(value)} if isinstance(node, dict) else set()


def _enums(node: Any) -> list[list[Any]]:
    if isinstance(node, list):
        return [found for item in node for found in _enums(item)]
    if not isinstance(node, dict):
        return []
    own = [node["enum"]] if isinstance(node.get("enum"), list) else []
    return own + [found for value in node.values() for found in _enums(value)]


def test_the_schema_file_spells_out_no_table_that_the_code_fills_in():
    text = resources.files("depthcontrast.schemas").joinpath("config.schema.yaml").read_text()
    spelled = [sorted(enum) for enum in _enums(yaml.safe_load(text))]
    for table, names in SCHEMA_ENUMS.items():
        assert sorted(names) not in spelled, f"the schema lists {table} itself: write `x-enum: {table}`"


def test_every_architecture_has_a_constructor_and_a_schema_block_of_its_own():
    assert set(BACKBONES) == set(ENCODERS) == set(POINT_BACKBONES) == set(architectures_of("point"))
    assert set(VOXEL_ENCODERS) == set(VoxelBackbone.DEFINITIONS) == set(VOXEL_HEAD_IN) == set(architectures_of("voxel"))
    for name, spec in POINT_BACKBONES.items():
        assert "head_dims" in schema_part("$defs", spec.definition, "properties"), name
    for name, definition in VoxelBackbone.DEFINITIONS.items():
        assert schema_part("$defs", definition, "properties", "name") == {"const": name}


def test_every_export_target_has_an_exporter_for_each_architecture_it_is_made_from():
    assert set(EXPORTERS) | set(VOXEL_EXPORTERS) == set(KNOWN_TARGETS)
    for target, architectures in EXPORT_TARGETS.items():
        for arch in architectures:
            exporters = VOXEL_EXPORTERS if ARCHITECTURES[arch].representation == "voxel" else EXPORTERS
            assert target in exporters, (target, arch)
        for arch, entry in ARCHITECTURES.items():
            assert set(entry.default_targets) <= {t for t, made_from in EXPORT_TARGETS.items() if arch in made_from}


def test_the_augmentation_presets_and_transforms_are_the_schemas():
    assert schema_part(*RUN, "augmentations", "enum") == list(PRESETS)
    overrides = schema_part(*RUN, "augmentation_overrides", "properties")
    assert set(overrides) == set(TRANSFORMS)
    assert all(set(names) <= set(TRANSFORMS) for names in PRESETS.values())


# ----------------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_augmentations_parameters_and_defaults_are_the_schemas(name: str):
    reference = schema_part(*RUN, "augmentation_overrides", "properties", name)["$ref"].rsplit("/", 1)[1]
    fields = {field.name: field.default for field in dataclasses.fields(TRANSFORMS[name])}
    assert set(schema_part("$defs", reference, "properties")) == set(fields)
    assert {key: frozen(value) for key, value in defaults("$defs", reference).items()} == frozen_dict(fields)


def frozen_dict(values: dict[str, Any]) -> dict[str, Any]:
    return {key: frozen(value) for key, value in values.items()}


def test_pointnet2_ssg_defaults_are_the_schemas():
    schema = defaults("$defs", "backbone_ssg")
    assert constructor_defaults(PointNet2SSG)["scale"] == schema["scale"]
    assert frozen(constructor_defaults(PointNet2SSG)["npoints"]) == frozen(schema["npoints"])
    assert frozen(constructor_defaults(PointNetEncoder)["npoints"]) == frozen(schema["npoints"])


def test_pointnet2_msg_defaults_are_the_schemas():
    schema = defaults("$defs", "backbone_msg")
    code = constructor_defaults(PointNet2MSG)
    for key in ("npoints", "radius", "nsample", "mlps", "fp_mlps"):
        assert frozen(code[key]) == frozen(schema[key]), key
    assert code["feature_channels"] == InputFeatures(tuple(schema["features"])).channels


def test_the_heads_the_code_defaults_to_are_the_schemas_derived_heads():
    embedding = defaults(*RUN, "loss")["embedding_dim"]
    ssg_width = fp_width(defaults("$defs", "backbone_ssg")["scale"])
    assert derived_head_dims("backbone_ssg", ssg_width, embedding) == list(ORIGINAL_HEAD_DIMS)
    msg_width = defaults("$defs", "backbone_msg")["fp_mlps"][0][-1]
    assert derived_head_dims("backbone_msg", msg_width, embedding) == list(ORIGINAL_MSG_HEAD_DIMS)
    pytest.importorskip("spconv.pytorch", reason="the voxel extra (spconv) is not installed")
    from depthcontrast.models import minkunet, spconv_unet

    for module, name in ((spconv_unet, "spconv_unet"), (minkunet, "minkunet")):
        derived = derived_head_dims(VoxelBackbone.DEFINITIONS[name], VOXEL_HEAD_IN[name], embedding)
        assert derived == list(module.ORIGINAL_HEAD_DIMS), name


@pytest.mark.parametrize("definition", ["backbone_ssg", "backbone_msg", "backbone_voxel", "backbone_minkunet"])
def test_a_derived_head_is_what_its_description_says(definition: str):
    head = schema_part("$defs", definition, "properties", "head_dims")
    hidden = head["x-derived-default"][1]
    assert f", {hidden}, embedding_dim]" in " ".join(head["description"].split())


def test_the_voxel_grid_defaults_are_the_schemas():
    schema = defaults("$defs", "backbone_voxel")
    grid = VoxelGrid()
    for key in ("voxel_size", "point_range", "max_points_per_voxel", "max_voxels"):
        assert frozen(getattr(grid, key)) == frozen(schema[key]), key


def test_the_loss_defaults_of_depthcontrast_are_the_schemas_for_one_representation():
    schema = defaults(*RUN, "loss")
    code = constructor_defaults(method.DepthContrast)
    assert code["queue_size"] == method.ORIGINAL_QUEUE_SIZE == schema["num_negatives"]
    assert code["embedding_dim"] == method.ORIGINAL_EMBEDDING_DIM == schema["embedding_dim"]
    assert code["temperature"] == method.ORIGINAL_TEMPERATURE == schema["temperature"]
    assert code["momentum"] == method.ORIGINAL_MOMENTUM == schema["momentum"]
    single = loss_term_defaults(1)
    assert frozen(code["loss_types"]) == frozen(single["loss_types"])
    assert frozen(code["within_format_weights"]) == frozen(single["within_format_weights"])
    assert frozen(code["across_format_weights"]) == frozen(single["across_format_weights"])
    assert schema_part(*RUN, "loss", "properties", "loss_types", "items", "enum") == list(method.LOSS_TYPES)


def _flow(value: list[Any]) -> str:
    """[1.0, 0.0] as the descriptions write it: [1, 0]."""
    return "[" + ", ".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in value) + "]"


@pytest.mark.parametrize("key", ["loss_types", "within_format_weights", "across_format_weights"])
def test_a_null_loss_term_is_derived_as_its_description_says(key: str):
    term = schema_part(*RUN, "loss", "properties", key)
    assert term["default"] is None
    description = " ".join(term["description"].split())
    for representations in (1, 2):
        assert _flow(loss_term_defaults(representations)[key]) in description


def test_a_joint_run_without_loss_terms_gets_the_original_lidar_joint_terms():
    block = {**defaults(*RUN, "loss"), "loss_types": None, "within_format_weights": None, "across_format_weights": None}
    joint, single = LossSpec.from_block(block, 2), LossSpec.from_block(block, 1)
    assert (joint.loss_types, joint.within_format_weights, joint.across_format_weights) == (("NPID",), (1, 1), (0, 0))
    assert single.within_format_weights == (1, 0)
    explicit = LossSpec.from_block({**block, "within_format_weights": [0.5, 0.25]}, 2)
    assert explicit.within_format_weights == (0.5, 0.25)  # a configured value is kept, null or not
