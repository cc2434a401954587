"""The backbone under evaluation: the point backbone of a pretraining checkpoint's query encoder, or random.

A checkpoint's `model` is the DepthContrast state_dict; its point query encoder's keys are
`query_encoders.point.<encoder key>`. The backbone takes those keys minus the projection head
(`head.*`), and the architecture (PointNet++ SSG scale and SA npoints, or the PointNet-MSG settings
and the per-point features it reads) from the checkpoint's resolved `config.backbone` block, built by
the same constructor table as pretraining, so pretrained and scratch backbones are the same network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from depthcontrast.checkpoint import CheckpointError, load_checkpoint
from depthcontrast.data.point_features import InputFeatures
from depthcontrast.errors import ConfigError
from depthcontrast.models.encoders import backbone_name, build_backbone

QUERY_ENCODER_PREFIX = "query_encoders.point."
PROJECTION_HEAD_PREFIX = "head."


@dataclass(frozen=True)
class BackboneSpec:
    """What a scratch backbone needs to match a checkpoint's, and the pretrained weights."""

    config: dict[str, Any]  # the checkpoint's resolved `backbone` block
    state_dict: dict[str, torch.Tensor]

    @property
    def name(self) -> str:
        return backbone_name(self.config)

    @property
    def npoints(self) -> tuple[int, ...]:
        """Centres per SA level (the first bounds the points per evaluated cloud)."""
        return tuple(int(n) for n in self.config["npoints"])

    @property
    def scale(self) -> int | None:
        """PointNet++ SSG width; None for other backbones."""
        return self.config.get("scale")

    @property
    def features(self) -> InputFeatures:
        """Per-point features the backbone reads after xyz."""
        return InputFeatures.of_backbone(self.config)

    def build(self, pretrained: bool) -> nn.Module:
        """A fresh backbone: the checkpoint's weights if `pretrained`, else the default random init
        (seed torch first for a reproducible one)."""
        backbone = build_backbone(self.config)
        if pretrained:
            backbone.load_state_dict(self.state_dict)
        return backbone


def _backbone_settings(path: Path, config: Any) -> dict[str, Any]:
    backbone = config.get("backbone") if isinstance(config, dict) else None
    if not isinstance(backbone, dict) or "npoints" not in backbone:
        raise CheckpointError(f"{path}: checkpoint config has no backbone settings; cannot rebuild its encoder")
    return backbone


def backbone_from_checkpoint(path: str | Path) -> BackboneSpec:
    """Read the point query encoder of a pretraining checkpoint; CheckpointError if it has none or
    its weights do not fit the architecture its config names."""
    path = Path(path)
    state = load_checkpoint(path)
    settings = _backbone_settings(path, state["config"])
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
        reference = build_backbone(settings)
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{path}: checkpoint config names an invalid backbone ({exc})") from None
    _check_layout(path, reference, weights, settings.get("name", "pointnet2_ssg"))
    return BackboneSpec(settings, weights)


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
