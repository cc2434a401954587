"""Export a pretraining checkpoint to the file a downstream codebase loads, verified and described.

`export_checkpoint` writes `{target}.pth` and a `{target}.json` sidecar (source and output sha256,
key map, shapes, the verification's missing/unexpected keys). Every export is checked before it is
written: the file's tensors are renamed as the downstream loader renames them and loaded strictly
into a module with the downstream backbone's names and shapes.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from depthcontrast import __version__
from depthcontrast.architectures import (
    ARCHITECTURES,
    EXPORT_TARGETS,
    KNOWN_TARGETS,
    MINKOWSKI,
    describe_encoders,
    source_representation,
    what_target_needs,
)
from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.export.downstream import minkunet_seg_config, openpcdet_backbone_config, openpcdet_unet_config
from depthcontrast.export.layouts import (
    HEAD_PREFIX,
    POINT_QUERY_TRUNK,
    VOTENET_PREFIX,
    VOXEL_QUERY_TRUNK,
    is_head_key,
    minkunet_seg_layout,
    minkunet_seg_loader_view,
    openpcdet_fork_loader_view,
    openpcdet_layout,
    openpcdet_loader_view,
    plain_layout,
    spconv1_weights,
    votenet_layout,
    votenet_loader_view,
)
from depthcontrast.export.minkowski import Res16UNet34StandIn, minkowski_state
from depthcontrast.export.openpcdet_reference import (
    SPCONV1_LAYOUT,
    PartA2StandIn,
    PointRCNNStandIn,
)
from depthcontrast.io_utils import atomic_write_bytes, atomic_write_json, sha256_file
from depthcontrast.models.encoders import build_backbone
from depthcontrast.models.pointnet2 import PointNet2SSG
from depthcontrast.specs import (
    PointBackbone,
    SSGBackbone,
    VoxelBackbone,
    stored_point_backbone,
    stored_voxel_backbone,
)

log = logging.getLogger(__name__)
QUERY_PREFIX = "query_encoders."
TOOL_VERSION = f"depthcontrast-pipeline {__version__}"
MAX_KEYS_IN_MESSAGE = 3


class ExportError(DataError):
    """A checkpoint cannot be exported to a target, or the export failed its own verification."""


@dataclass
class Export:
    """What a target makes of a checkpoint, before it is written."""

    payload: dict[str, Any]  # what torch.save writes to {target}.pth
    tensors: dict[str, torch.Tensor]  # the exported tensors by output key (for shapes)
    key_map: dict[str, str]  # checkpoint key → output key
    missing_keys: list[str]
    unexpected_keys: list[str]
    ignored_keys: list[str] = field(default_factory=list)  # present in the file, skipped by the loader by design
    safetensors: bytes | None = None  # also written as {target}.safetensors when set
    downstream_config: dict[str, Any] | None = None  # settings the downstream model must have for the file to fit


@dataclass(frozen=True)
class Source:
    """What an export is made from: the checkpoint, its epoch, and one query encoder's spec and weights."""

    checkpoint: Path
    epoch: int
    spec: PointBackbone | VoxelBackbone  # of the representation the target is made from
    encoder: dict[str, torch.Tensor]  # the query encoder's state_dict under its own names


STORED_SPECS = {"point": stored_point_backbone, "voxel": stored_voxel_backbone}


def checkpoint_encoders(state: Mapping[str, Any], source: str) -> dict[str, PointBackbone | VoxelBackbone]:
    """Representation → spec of each query encoder in a loaded checkpoint (from its stored config's blocks)."""
    representations = sorted({key.split(".")[1] for key in state["model"] if key.startswith(QUERY_PREFIX)})
    return {name: STORED_SPECS[name](state["config"], source) for name in representations if name in STORED_SPECS}


def query_encoder_state(state: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The query encoder `name`'s state_dict under its own names (`sa1...`, `head.clf.0.weight`)."""
    prefix = f"{QUERY_PREFIX}{name}."
    return {key[len(prefix) :]: tensor for key, tensor in state["model"].items() if key.startswith(prefix)}


def _encoder_for(checkpoint: Path, target: str, encoders: Mapping[str, str]) -> str:
    """The representation of the checkpoint's encoder that `target` is made from, else ExportError."""
    name = source_representation(target, encoders)
    if name is None:
        raise ExportError(
            f"{checkpoint}: checkpoint has only {describe_encoders(encoders)}; target {target!r} needs a run with "
            f"{what_target_needs(target)}"
        )
    return name


def _summary(keys: list[str]) -> str:
    shown = ", ".join(keys[:MAX_KEYS_IN_MESSAGE])
    return f"{len(keys)} keys ({shown}{', ...' if len(keys) > MAX_KEYS_IN_MESSAGE else ''})" if keys else "none"


def _strict_load(module: nn.Module, tensors: Mapping[str, torch.Tensor], what: str) -> tuple[list[str], list[str]]:
    """Load into `module`; return (missing, unexpected); a shape mismatch raises ExportError."""
    try:
        result = module.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as exc:
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ExportError(f"{what}: {problems[0]}{more}") from None
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


class _VoteNetDetector(nn.Module):
    """Stands in for VoteNet: only its `backbone_net` (Pointnet2Backbone names and shapes) is loaded."""

    def __init__(self, scale: int):
        super().__init__()
        self.backbone_net = PointNet2SSG(scale=scale)


def _export_votenet(source: Source) -> Export:
    spec: SSGBackbone = source.spec  # votenet and h3dnet are made from PointNet++ SSG only
    model, key_map = votenet_layout(source.encoder)
    view = votenet_loader_view(model)
    ignored = sorted(key for key in view if key.startswith(VOTENET_PREFIX + HEAD_PREFIX))
    loaded = {key: tensor for key, tensor in view.items() if key not in ignored}
    detector = _VoteNetDetector(spec.scale)
    missing, unexpected = _strict_load(detector, loaded, f"{source.checkpoint}: VoteNet backbone_net")
    return Export(
        payload={"model": model, "epoch": source.epoch},
        tensors=model,
        key_map={f"{QUERY_PREFIX}point.{key}": out for key, out in key_map.items()},
        missing_keys=missing,
        unexpected_keys=unexpected,
        ignored_keys=ignored,
    )


def _export_plain(source: Source) -> Export:
    backbone, key_map = plain_layout(source.encoder)
    reference = build_backbone(source.spec)
    name = ARCHITECTURES[source.spec.name].title
    missing, unexpected = _strict_load(reference, backbone, f"{source.checkpoint}: {name} backbone")
    contiguous = {key: tensor.contiguous() for key, tensor in backbone.items()}
    metadata = {"format": "pt", "source_epoch": str(source.epoch), "tool_version": TOOL_VERSION}
    return Export(
        payload=backbone,
        tensors=backbone,
        key_map={f"{QUERY_PREFIX}point.{key}": out for key, out in key_map.items()},
        missing_keys=missing,
        unexpected_keys=unexpected,
        safetensors=safetensors_bytes(contiguous, metadata=metadata),
    )


def _export_openpcdet(source: Source) -> Export:
    """`model_state` (upstream `--pretrained_model`) + `classy_state_dict` (the DepthContrast fork), verified
    by both loaders' rules into a PointRCNN stand-in built from OpenPCDet's construction rules."""
    downstream = openpcdet_backbone_config(source.spec)
    layout, key_map = openpcdet_layout(source.encoder, trunk=POINT_QUERY_TRUNK)
    backbone_3d = downstream["BACKBONE_3D"]
    detector = PointRCNNStandIn(backbone_3d["SA_CONFIG"]["MLPS"], backbone_3d["FP_MLPS"], downstream["input_channels"])
    return _verified_openpcdet(source, (layout, key_map), (detector, detector), downstream, "point", "PointNet2MSG")


def _export_openpcdet_unet(source: Source) -> Export:
    """The sparse UNet as Part-A2's `backbone_3d`: `model_state` in spconv 2.x layout for upstream OpenPCDet,
    `classy_state_dict` trunk 2 in spconv 1.x layout for the fork; each verified by its loader's rules into a
    stand-in built from OpenPCDet's UNetV2 names and shapes in that layout."""
    downstream = openpcdet_unet_config(source.spec)
    layout, key_map = openpcdet_layout(source.encoder, trunk=VOXEL_QUERY_TRUNK)
    trunk = layout["classy_state_dict"]["base_model"]["model"]["trunk"]
    trunk_spconv1, _ = spconv1_weights(trunk)
    layout["classy_state_dict"]["base_model"]["model"]["trunk"] = trunk_spconv1
    detector = PartA2StandIn(downstream["input_channels"])
    fork = PartA2StandIn(downstream["input_channels"], layout=SPCONV1_LAYOUT)
    return _verified_openpcdet(source, (layout, key_map), (detector, fork), downstream, "voxel", "UNetV2")


def _verified_openpcdet(
    source: Source,
    layout_and_map: tuple[dict[str, Any], dict[str, str]],
    detectors: tuple[nn.Module, nn.Module],
    downstream: dict[str, Any],
    representation: str,
    backbone_name: str,
) -> Export:
    """An OpenPCDet export of the `representation` encoder, checked by upstream's loader rules (nothing skipped,
    then a strict load into detectors[0]) and by the fork's (a strict load of its view into detectors[1])."""
    checkpoint, encoder = source.checkpoint, source.encoder
    layout, key_map = layout_and_map
    upstream, fork = detectors
    model_state = layout["model_state"]
    what = f"{checkpoint}: OpenPCDet backbone_3d ({backbone_name})"
    loaded, skipped = openpcdet_loader_view(model_state, upstream.state_dict())
    if skipped:
        raise ExportError(
            f"{checkpoint}: OpenPCDet's loader would skip {_summary(skipped)} (unknown to {backbone_name} or of "
            f"another shape); the checkpoint does not fit the {representation} backbone its config names"
        )
    missing, unexpected = _strict_load(upstream, loaded, what)
    fork_view = openpcdet_fork_loader_view(layout, list(fork.state_dict()))
    fork_missing, fork_unexpected = _strict_load(fork, fork_view, f"{what}, the fork's view")
    trunk = POINT_QUERY_TRUNK if representation == "point" else VOXEL_QUERY_TRUNK
    ignored = sorted(f"classy_state_dict trunk {trunk}.{key}" for key in encoder if is_head_key(key))
    return Export(
        payload={**layout, "epoch": source.epoch, "version": TOOL_VERSION},
        tensors=model_state,
        key_map={f"{QUERY_PREFIX}{representation}.{key}": out for key, out in key_map.items()},
        missing_keys=sorted(set(missing) | set(fork_missing)),
        unexpected_keys=sorted(set(unexpected) | set(fork_unexpected)),
        ignored_keys=ignored,
        downstream_config=downstream,
    )


def _minkunet_backbone(source: Source) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The MinkUNet34 backbone under MinkowskiEngine 0.5.4's names and layout, and the checkpoint → export key map:
    a MinkowskiEngine run's own tensors, a spconv run's converted."""
    if source.spec.stack == MINKOWSKI:
        key_map = {key: key for key in source.encoder if not is_head_key(key)}
        return {key: source.encoder[key] for key in key_map}, key_map
    return minkowski_state(source.encoder)


def _real_minkowski_check(bare: Mapping[str, torch.Tensor], in_channels: int, what: str) -> list[str]:
    """Strictly load `bare` into a real MinkowskiEngine Res16UNet34 where MinkowskiEngine is installed; returns the
    loaders that took it (an empty list without MinkowskiEngine)."""
    from depthcontrast.models.minkunet_me import Res16UNet34, minkowski_available

    if not minkowski_available():
        return []
    missing, unexpected = _strict_load(Res16UNet34(in_channels), bare, what)
    if missing or unexpected:
        raise ExportError(f"{what}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return ["MinkowskiEngine Res16UNet34 (strict)"]


def _export_minkunet_seg(source: Source) -> Export:
    """MinkUNet34 for SpatioTemporalSegmentation: `state_dict` with bare MinkowskiEngine names (upstream) and
    `model` keyed `module.trunk.2.` (the DepthContrast fork), kernels in MinkowskiEngine 0.5.4's layout; both
    loaders' views loaded strictly into a stand-in built from STS's Res16UNet34 names, and the bare one into a real
    MinkowskiEngine Res16UNet34 where MinkowskiEngine is installed."""
    checkpoint = source.checkpoint
    downstream = minkunet_seg_config(source.spec)
    bare, key_map = _minkunet_backbone(source)
    fork_model, _ = minkunet_seg_layout(bare)
    stand_in = Res16UNet34StandIn(downstream["in_channels"])
    missing, unexpected = _strict_load(stand_in, bare, f"{checkpoint}: SpatioTemporalSegmentation Res16UNet34")
    fork_view = minkunet_seg_loader_view(fork_model)
    fork_missing, fork_unexpected = _strict_load(stand_in, fork_view, f"{checkpoint}: STS fork Res16UNet34")
    loaded_by = _real_minkowski_check(bare, downstream["in_channels"], f"{checkpoint}: MinkowskiEngine Res16UNet34")
    return Export(
        payload={"state_dict": bare, "model": fork_model, "epoch": source.epoch, "version": TOOL_VERSION},
        tensors=bare,
        key_map={f"{QUERY_PREFIX}voxel.{key}": out for key, out in key_map.items()},
        missing_keys=sorted(set(missing) | set(fork_missing)),
        unexpected_keys=sorted(set(unexpected) | set(fork_unexpected)),
        downstream_config={**downstream, "loaded_by": loaded_by or ["stand-in only (no MinkowskiEngine here)"]},
    )


Exporter = Callable[[Source], Export]
EXPORTERS: dict[str, Exporter] = {
    "votenet": _export_votenet,
    "h3dnet": _export_votenet,
    "plain": _export_plain,
    "openpcdet": _export_openpcdet,
}
VOXEL_EXPORTERS: dict[str, Exporter] = {  # from a run's voxel encoder
    "openpcdet": _export_openpcdet_unet,
    "minkunet_seg": _export_minkunet_seg,
}


def _torch_bytes(payload: Any) -> bytes:
    """torch.save into memory: the bytes depend on the payload only, not on the file name."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def export_checkpoint(checkpoint: Path, target: str, out_dir: Path) -> tuple[Path, Path]:
    """Write `{target}.pth` and its `{target}.json` sidecar under `out_dir`; return both paths.

    Raises ConfigError for an unknown target, CheckpointError for an unreadable checkpoint and
    ExportError when the checkpoint lacks the encoder the target needs or fails verification.
    """
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if target not in EXPORT_TARGETS:
        raise ConfigError(f"unknown export target {target!r} (known: {', '.join(KNOWN_TARGETS)})")
    state = load_checkpoint(checkpoint)
    specs = checkpoint_encoders(state, str(checkpoint))
    name = _encoder_for(checkpoint, target, {representation: spec.name for representation, spec in specs.items()})
    exporters = VOXEL_EXPORTERS if name == "voxel" else EXPORTERS
    if target not in exporters:
        raise ExportError(f"{checkpoint}: export to {target!r} is not implemented yet")
    export = exporters[target](Source(checkpoint, state["epoch"], specs[name], query_encoder_state(state, name)))
    if export.missing_keys or export.unexpected_keys:
        raise ExportError(
            f"{checkpoint}: export to {target!r} does not load strictly: missing {_summary(export.missing_keys)}, "
            f"unexpected {_summary(export.unexpected_keys)}"
        )

    weights = out_dir / f"{target}.pth"
    atomic_write_bytes(weights, _torch_bytes(export.payload))
    other_outputs = {}
    if export.safetensors is not None:
        extra = out_dir / f"{target}.safetensors"
        atomic_write_bytes(extra, export.safetensors)
        other_outputs[extra.name] = sha256_file(extra)
    sidecar = out_dir / f"{target}.json"
    atomic_write_json(
        sidecar,
        {
            "target": target,
            "source_checkpoint": str(checkpoint),
            "source_sha256": sha256_file(checkpoint),
            "output": weights.name,
            "output_sha256": sha256_file(weights),
            "other_outputs": other_outputs,
            "key_map": export.key_map,
            "shapes": {key: list(tensor.shape) for key, tensor in export.tensors.items()},
            "missing_keys": export.missing_keys,
            "unexpected_keys": export.unexpected_keys,
            "ignored_by_loader": export.ignored_keys,
            "downstream_config": export.downstream_config,
            "epoch": state["epoch"],
            "tool_version": TOOL_VERSION,
        },
    )
    log.info("exported %s to %s (%d tensors, verified by a strict load)", checkpoint, weights, len(export.tensors))
    return weights, sidecar
