"""Typed specs of the config blocks: each validated block is parsed once, where a stage starts, and the modules
below take the typed part they need, never the raw dict.

- a pretraining run (`pretrain.<run>`): `parse_run` → RunSpec, in train.Trainer (the first step of train.pretrain);
- the built-in evaluation (`evaluate`, `evaluate.tasks.<task>`): EvaluateSpec, EvaluateTask, in evaluate.run;
- a checkpoint's stored encoder blocks (its resolved run config): `stored_point_backbone`,
  `stored_voxel_backbone`, in evaluate.backbone and export.targets;
- a run's Slurm `resources`: slurm.ResourcesSpec (the Slurm layer's own).

Every default lives in the schema (depthcontrast/schemas/config.schema.yaml), which fills it in before a block
gets here, so a spec only reads. Where the schema leaves a key null to be derived (`x-derived-default`), the one
function here that derives it reads the rule from the schema: the loss terms by the number of representations
(`loss_term_defaults`), a projection head by its backbone's width (`derived_head_dims`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from depthcontrast.architectures import REPRESENTATIONS, SPCONV
from depthcontrast.config import schema_part, validate_part
from depthcontrast.data.augment import RESAMPLERS, TransformSpec, preset_transforms
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.data.voxelize import VoxelGrid
from depthcontrast.errors import ConfigError

DERIVED = "x-derived-default"  # the schema's rule for a null key
LOSS_TERMS = ("loss_types", "within_format_weights", "across_format_weights")  # null: derived
STORED_BLOCKS = {"backbone": "#/$defs/pretrain_run/properties/backbone",
                 "voxel_backbone": "#/$defs/pretrain_run/properties/voxel_backbone"}  # fmt: skip


def _frozen(value: Any) -> Any:
    """Lists (at any depth) as tuples: a spec's values do not change under it."""
    return tuple(_frozen(item) for item in value) if isinstance(value, (list, tuple)) else value


def _head(block: Mapping[str, Any]) -> tuple[int, ...] | None:
    return None if block.get("head_dims") is None else _frozen(block["head_dims"])


def derived_head_dims(definition: str, width: int, embedding_dim: int) -> list[int]:
    """The projection head a null `head_dims` of the schema's `definition` block stands for: its
    x-derived-default, e.g. [width, 512, embedding_dim], with the backbone's output width and the embedding."""
    pattern = schema_part("$defs", definition, "properties", "head_dims", DERIVED)
    values = {"width": width, "embedding_dim": embedding_dim}
    return [values.get(part, part) if isinstance(part, str) else part for part in pattern]


# ----------------------------------------------------------------------------------- encoders
@dataclass(frozen=True)
class SSGBackbone:
    """PointNet++ SSG (`backbone` with name pointnet2_ssg): reads xyz only."""

    name: ClassVar[str] = "pointnet2_ssg"
    definition: ClassVar[str] = "backbone_ssg"  # its block in the schema's $defs
    features: ClassVar[InputFeatures] = InputFeatures()

    scale: int
    npoints: tuple[int, ...]
    head_dims: tuple[int, ...] | None

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> SSGBackbone:
        return cls(block["scale"], _frozen(block["npoints"]), _head(block))


@dataclass(frozen=True)
class MSGBackbone:
    """PointNet-MSG (`backbone` with name pointnet2_msg): OpenPCDet's SA_CONFIG / FP_MLPS and the features after
    xyz."""

    name: ClassVar[str] = "pointnet2_msg"
    definition: ClassVar[str] = "backbone_msg"

    npoints: tuple[int, ...]
    radius: tuple[tuple[float, ...], ...]
    nsample: tuple[tuple[int, ...], ...]
    mlps: tuple[tuple[tuple[int, ...], ...], ...]
    fp_mlps: tuple[tuple[int, ...], ...]
    features: InputFeatures
    head_dims: tuple[int, ...] | None

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> MSGBackbone:
        layers = (_frozen(block[key]) for key in ("npoints", "radius", "nsample", "mlps", "fp_mlps"))
        return cls(*layers, InputFeatures(tuple(block["features"]), block["intensity_max"]), _head(block))


PointBackbone = SSGBackbone | MSGBackbone
POINT_BACKBONES: dict[str, type[SSGBackbone] | type[MSGBackbone]] = {
    SSGBackbone.name: SSGBackbone,
    MSGBackbone.name: MSGBackbone,
}


def point_backbone(block: Mapping[str, Any]) -> PointBackbone:
    """The spec of a validated `backbone` block."""
    return POINT_BACKBONES[block["name"]].from_block(block)


@dataclass(frozen=True)
class VoxelBackbone:
    """The voxel encoder (`voxel_backbone`): its architecture, the voxelisation of its views, its input features
    and head."""

    DEFINITIONS: ClassVar[dict[str, str]] = {"spconv_unet": "backbone_voxel", "minkunet": "backbone_minkunet"}

    name: str
    grid: VoxelGrid
    features: InputFeatures
    head_dims: tuple[int, ...] | None
    stack: str = SPCONV  # the sparse-conv library: spconv, or minkowski (MinkUNet only)

    @property
    def definition(self) -> str:
        return self.DEFINITIONS[self.name]


def voxel_backbone(block: Mapping[str, Any]) -> VoxelBackbone:
    """The spec of a validated `voxel_backbone` block (MinkUNet's has no intensity_max: it reads rgb)."""
    grid = VoxelGrid(
        _frozen(block["voxel_size"]), _frozen(block["point_range"]), block["max_points_per_voxel"], block["max_voxels"]
    )
    features = InputFeatures(tuple(block["features"]), block.get("intensity_max"))
    return VoxelBackbone(block["name"], grid, features, _head(block), block.get("stack", SPCONV))


def stored_point_backbone(config: Mapping[str, Any], source: str) -> PointBackbone:
    """The point encoder of a checkpoint's stored run config, its `backbone` block checked (and completed) by the
    schema; ConfigError naming `source` when it has none or it does not validate."""
    return point_backbone(_stored_block(config, "backbone", source))


def stored_voxel_backbone(config: Mapping[str, Any], source: str) -> VoxelBackbone:
    """The voxel encoder of a checkpoint's stored run config (see stored_point_backbone)."""
    return voxel_backbone(_stored_block(config, "voxel_backbone", source))


def _stored_block(config: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    block = config.get(key) if isinstance(config, Mapping) else None
    if not isinstance(block, Mapping):
        raise ConfigError(f"{source}: the checkpoint's config has no {key} block")
    return validate_part(block, STORED_BLOCKS[key], (key,), source)


# ----------------------------------------------------------------------------------- training
def loss_term_defaults(representations: int) -> dict[str, list[Any]]:
    """What the null loss terms of a run with that many representations stand for: the schema's
    x-derived-default (`single` for one, `joint` for two)."""
    kind = "joint" if representations > 1 else "single"
    terms = schema_part("$defs", "pretrain_run", "properties", "loss", "properties")
    return {key: terms[key][DERIVED][kind] for key in LOSS_TERMS}


@dataclass(frozen=True)
class LossSpec:
    """The NCE loss and its queues (`loss`), its term settings resolved for the run's representations."""

    temperature: float
    num_negatives: int
    embedding_dim: int
    momentum: float
    loss_types: tuple[str, ...]
    within_format_weights: tuple[float, ...]
    across_format_weights: tuple[float, ...]

    @classmethod
    def from_block(cls, block: Mapping[str, Any], representations: int) -> LossSpec:
        derived = loss_term_defaults(representations)
        terms = (_frozen(derived[key] if block[key] is None else block[key]) for key in LOSS_TERMS)
        return cls(block["temperature"], block["num_negatives"], block["embedding_dim"], block["momentum"], *terms)


@dataclass(frozen=True)
class OptimizerSpec:
    """`optimizer`: SGD."""

    name: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool


@dataclass(frozen=True)
class ScheduleSpec:
    """`schedule`: the learning rate over the epochs."""

    name: str
    final_lr: float
    warmup_epochs: float
    per_step: bool


@dataclass(frozen=True)
class ViewsSpec:
    """The views' augmentations: the preset's list with the run's overrides, resampled to points_per_view."""

    preset: str
    transforms: tuple[TransformSpec, ...]
    points_per_view: int

    @property
    def voxel_transforms(self) -> tuple[TransformSpec, ...]:
        """The voxel views' augmentations: the same without the final resampling (the original's voxel branch
        keeps every point)."""
        return tuple(spec for spec in self.transforms if spec.name not in RESAMPLERS)


@dataclass(frozen=True)
class RunSpec:
    """The training settings of a pretraining run: every key of its validated block but `enabled`,
    `export_targets` and `resources` (what the workflow does with the run, not how it trains)."""

    datasets: tuple[str, ...]
    backbone: PointBackbone | None  # the point encoder; None when the run trains no point representation
    voxel_backbone: VoxelBackbone | None  # the voxel encoder; None when the run trains no voxel representation
    views: ViewsSpec
    loss: LossSpec
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    batch_size: int
    epochs: int
    precision: str
    compile: bool
    augment_on: str
    grad_clip_norm: float | None
    checkpoint_every_epochs: int
    num_workers: int
    verify_shards: bool
    seed: int
    deterministic: bool
    log_every_steps: int

    @property
    def representations(self) -> tuple[str, ...]:
        """The representations trained, point first."""
        encoders = {"point": self.backbone, "voxel": self.voxel_backbone}
        return tuple(name for name in REPRESENTATIONS if encoders[name] is not None)


def parse_run(run: Mapping[str, Any]) -> RunSpec:
    """The RunSpec of a validated `pretrain.<run>` block (with or without its enabled, export_targets and
    resources); ConfigError for augmentation overrides the preset does not list."""
    representations = [name for name in REPRESENTATIONS if name in run["representations"]]
    views = ViewsSpec(
        run["augmentations"],
        preset_transforms(run["augmentations"], run["augmentation_overrides"], run["points_per_view"]),
        run["points_per_view"],
    )
    loop = ("batch_size", "epochs", "precision", "compile", "augment_on", "grad_clip_norm", "checkpoint_every_epochs",
            "num_workers", "verify_shards", "seed", "deterministic", "log_every_steps")  # fmt: skip
    return RunSpec(
        datasets=tuple(run["datasets"]),
        backbone=point_backbone(run["backbone"]) if "point" in representations else None,
        voxel_backbone=voxel_backbone(run["voxel_backbone"]) if "voxel" in representations else None,
        views=views,
        loss=LossSpec.from_block(run["loss"], len(representations)),
        optimizer=OptimizerSpec(**run["optimizer"]),
        schedule=ScheduleSpec(**run["schedule"]),
        **{key: run[key] for key in loop},
    )


# ----------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class TrainSettings:
    """One evaluation protocol's optimisation settings (`evaluate.linear` / `evaluate.finetune`)."""

    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float


@dataclass(frozen=True)
class EvaluateSpec:
    """The built-in evaluation's settings (`evaluate`, without its tasks): the protocols run, in order, each with
    its settings (`evaluate.linear`, `evaluate.finetune`)."""

    seeds: tuple[int, ...]
    points: int
    protocols: Mapping[str, TrainSettings]

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> EvaluateSpec:
        protocols = {name: TrainSettings(**block[name]) for name in block["protocols"]}
        return cls(tuple(block["seeds"]), block["points"], protocols)


@dataclass(frozen=True)
class EvaluateTask:
    """One downstream task (`evaluate.tasks.<task>`)."""

    dataset: str
    kind: str
    test_groups: tuple[str, ...]
    xyz_scale: float
    train_dataset: str | None = None  # None: dataset's other groups train

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> EvaluateTask:
        return cls(
            block["dataset"], block["kind"], tuple(block["test_groups"]), block["xyz_scale"], block.get("train_dataset")
        )
