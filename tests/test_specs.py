"""A validated config block parsed once into its typed spec: what each spec holds, and the stored blocks of a
checkpoint read back through the schema."""

from __future__ import annotations

import pytest

from depthcontrast.config import validate_config
from depthcontrast.errors import ConfigError
from depthcontrast.specs import (
    EvaluateSpec,
    MSGBackbone,
    SSGBackbone,
    TrainSettings,
    parse_run,
    stored_point_backbone,
    stored_voxel_backbone,
)


def validated(**run) -> dict:
    config = {
        "datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}},
        "pretrain": {"r": {"datasets": ["d"], **run}},
    }
    return validate_config(config)["pretrain"]["r"]


def test_a_run_spec_holds_the_preset_with_its_overrides_resampled_to_points_per_view():
    spec = parse_run(validated(augmentations="lidar", points_per_view=512,
                               augmentation_overrides={"random_drop": {"crop": 0.3}}))  # fmt: skip
    names = [transform.name for transform in spec.views.transforms]
    assert names[0] == "random_cuboid_lidar" and names[-1] == "resample_lidar"
    assert spec.views.transforms[1].params == {"crop": 0.3}
    assert spec.views.transforms[-1].params == {"npoints": 512}
    assert [t.name for t in spec.views.voxel_transforms] == names[:-1]  # voxel views keep every point
    assert spec.optimizer.lr == 0.12 and spec.schedule.name == "cosine" and spec.epochs == 1000


def test_an_override_of_an_augmentation_the_preset_lacks_fails_when_the_run_is_parsed():
    run = validated(augmentation_overrides={"random_flip_lidar": {"flip_y": False}})  # the indoor preset
    with pytest.raises(ConfigError, match=r"\['random_flip_lidar'\] not in the indoor preset"):
        parse_run(run)


def test_a_voxel_block_of_a_point_only_run_trains_nothing():
    spec = parse_run(validated(voxel_backbone={"name": "minkunet"}))
    assert spec.representations == ("point",) and spec.voxel_backbone is None
    assert isinstance(spec.backbone, SSGBackbone) and spec.backbone.npoints == (2048, 1024, 512, 256)


def test_the_encoder_specs_read_their_blocks_features_and_grid():
    spec = parse_run(validated(representations=["point", "voxel"], backbone={"name": "pointnet2_msg"},
                               voxel_backbone={"features": [], "max_voxels": 77}))  # fmt: skip
    assert isinstance(spec.backbone, MSGBackbone) and spec.backbone.features.names == ("intensity",)
    assert spec.backbone.radius[0] == (0.1, 0.5)  # nested lists frozen as tuples
    voxel = spec.voxel_backbone
    assert voxel.name == "spconv_unet" and voxel.features.names == () and voxel.grid.max_voxels == 77
    assert voxel.grid.voxel_size == (0.1, 0.1, 0.2) and voxel.head_dims is None


def test_a_stored_block_is_completed_and_checked_by_the_schema():
    legacy = {"backbone": {"scale": 2, "npoints": [64, 32, 16, 8]}}  # written before backbone.name existed
    spec = stored_point_backbone(legacy, "ck.pth")
    assert isinstance(spec, SSGBackbone) and spec.scale == 2 and spec.head_dims is None
    with pytest.raises(ConfigError, match=r"^ck\.pth: backbone: unknown key 'scale'"):
        stored_point_backbone({"backbone": {"name": "pointnet2_msg", "scale": 2}}, "ck.pth")
    with pytest.raises(ConfigError, match=r"ck\.pth: the checkpoint's config has no voxel_backbone block"):
        stored_voxel_backbone(legacy, "ck.pth")


def test_the_evaluation_spec_holds_each_protocols_settings():
    block = validate_config({"datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}}})["evaluate"]
    spec = EvaluateSpec.from_block(block)
    assert spec.seeds == (0, 1, 2) and list(spec.protocols) == ["linear", "finetune"]
    linear = TrainSettings(epochs=30, lr=0.01, batch_size=8, momentum=0.9, weight_decay=0.0001)
    assert spec.protocols["linear"] == linear and spec.protocols["finetune"].epochs == 4
    only_linear = EvaluateSpec.from_block({**block, "protocols": ["linear"]})
    assert list(only_linear.protocols) == ["linear"]  # the protocols not run are not read
