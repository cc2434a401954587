"""The backbone under evaluation: the point backbone of a pretraining checkpoint's query encoder, or random.

A checkpoint's `model` is the DepthContrast state_dict; its point query encoder's keys are
`query_encoders.point.<encoder key>`. The backbone takes those keys minus the projection head
(`head.*`), and the architecture (PointNet++ SSG scale and SA npoints, or the PointNet-MSG settings
and the per-point features it reads) from the checkpoint's resolved `config.backbone` block, parsed into its
spec (specs.stored_point_backbone) and built by the same constructor table as pretraining, so pretrained and
scratch backbones are the same network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from depthcontrast.checkpoint import CheckpointError, load_checkpoint
from depthcontrast.errors import ConfigError
from depthcontrast.models.encoders import build_backbone
from depthcontrast.specs import PointBackbone, SSGBackbone, stored_point_backbone

QUERY_ENCODER_PREFIX = "query_encoders.point."
PROJECTION_HEAD_PREFIX = "head."


@dataclass(frozen=True)
class CheckpointBackbone:
    """A checkpoint's point backbone: its spec (what a scratch backbone needs to match it) and its weights."""

    spec: PointBackbone
    state_dict: dict[str, torch.Tensor]

    @property
    def scale(self) -> int | None:
        """PointNet++ SSG width; None for other backbones."""
        return self.spec.scale if isinstance(self.spec, SSGBackbone) else None

    def build(self, pretrained: bool) -> nn.Module:
        """A fresh backbone: the checkpoint's weights if `pretrained`, else the default random init
        (seed torch first for a reproducible one)."""
        backbone = build_backbone(self.spec)
        if pretrained:
            backbone.load_state_dict(self.state_dict)
        return backbone


def backbone_from_checkpoint(path: str | Path) -> CheckpointBackbone:
    """Read the point query encoder of a pretraining checkpoint; CheckpointError if it has none or
    its weights do not fit the architecture its config names."""
    path = Path(path)
    state = load_checkpoint(path)
    try:
        spec = stored_point_backbone(state["config"], str(path))
    except ConfigError as exc:
        raise CheckpointError(f"{exc}; cannot rebuild its encoder") from None
    model = state["model"]
    encoder = {
        key.removeprefix(QUERY_ENCODER_PREFIX): v for key, v in model.items() if key.startswith(QUERY_ENCODER_PREFIX)
    }
    weights = {key: value for key, value in encoder.items() if not key.startswith(PROJECTION_HEAD_PREFIX)}
    if not weights:
        sample = ", ".join(list(model)[:3])
        raise CheckpointError(
            f"{path}: no point query encoder in the checkpoint "
            f"(expected keys {QUERY_ENCODER_PREFIX}*, found {sample}, ...)"
        )
    try:
        reference = build_backbone(spec)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: checkpoint config names an invalid backbone ({exc})") from None
    _check_layout(path, reference, weights, spec.name)
    return CheckpointBackbone(spec, weights)


def _check_layout(path: Path, reference: nn.Module, weights: dict[str, torch.Tensor], name: str) -> None:
    expected = reference.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong_shape:
            key = wrong_shape[0]
            details.append(
                f"{len(wrong_shape)} of another shape (e.g. {key}: {tuple(weights[key].shape)} "
                f"vs {tuple(expected[key].shape)})"
            )
        raise CheckpointError(
            f"{path}: the point query encoder does not fit the {name} backbone its config names: {'; '.join(details)}"
        )


def evaluation_device() -> torch.device:
    """The device evaluations run on: the first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_label(device: torch.device) -> str:
    """What metrics.json records of `device`: the GPU's name (`NVIDIA H200`), or `cpu`."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
