"""MinkUNet34 (SpatioTemporalSegmentation's `Res16UNet34`) on real MinkowskiEngine 0.5.4 (`stack: minkowski`).

The same network as models/minkunet.py (the spconv build), with MinkowskiEngine modules and STS's module names,
so that its state_dict is what a MinkowskiEngine Res16UNet34 loads: `<conv>.kernel` [kernel_volume, in, out]
(`[in, out]` for the 1³ downsample convs), `<norm>.bn.*` (MinkowskiBatchNorm). Norm momenta as the original:
0.02 outside the blocks and in the downsample norms, 0.1 inside the blocks. Every conv has a HYPER_CUBE region:
MinkowskiEngine 0.5.4 cannot run the HYBRID region STS's blocks name (its KernelGenerator has no kernel volume for
it and its kernel map refuses CUSTOM offsets), so 0.4-era checkpoints' block kernels are reordered on import
(export/minkowski.py). Coordinates are the voxel indices as x, y, z (MinkowskiEngine's order), batch first.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from depthcontrast.errors import ConfigError
from depthcontrast.models.heads import per_sample_max
from depthcontrast.models.res16unet34 import (
    BLOCK_BN_MOMENTUM,
    BN_EPS,
    BN_MOMENTUM,
    CONV1_KERNEL_SIZE,
    INIT_DIM,
    LAYERS,
    ORIGINAL_HEAD_DIMS,
    PLANES,
    network_input,
    projection_head,
)

INSTALL_HINT = (
    "MinkowskiEngine is not installed: build and install it with `python -m depthcontrast.minkowski_build "
    "--install` (add --cuda on a GPU machine), use the minkowski container, or set voxel_backbone.stack: spconv"
)
DIMENSION = 3
ZYX_TO_XYZ = [0, 3, 2, 1]  # collate_voxels' (batch, z, y, x) → MinkowskiEngine's (batch, x, y, z)


def minkowski_available() -> bool:
    """Whether MinkowskiEngine can be imported here."""
    try:
        import_minkowski()
    except ConfigError:
        return False
    return True


def import_minkowski() -> Any:
    """The MinkowskiEngine module, or a ConfigError naming the install step."""
    try:
        import MinkowskiEngine as ME
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ME


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, transpose: bool = False) -> nn.Module:
    ME = import_minkowski()
    kind = ME.MinkowskiConvolutionTranspose if transpose else ME.MinkowskiConvolution
    return kind(cin, cout, kernel_size=kernel, stride=stride, bias=False, dimension=DIMENSION)


def _norm(channels: int, momentum: float) -> nn.Module:
    return import_minkowski().MinkowskiBatchNorm(channels, eps=BN_EPS, momentum=momentum)


def _relu() -> nn.Module:
    return import_minkowski().MinkowskiReLU()


class BasicBlock(nn.Module):
    """STS's BasicBlock: conv1/norm1/ReLU/conv2/norm2 + (downsampled) input, ReLU."""

    def __init__(self, inplanes: int, planes: int):
        super().__init__()
        self.conv1 = _conv(inplanes, planes, 3)
        self.norm1 = _norm(planes, BLOCK_BN_MOMENTUM)
        self.conv2 = _conv(planes, planes, 3)
        self.norm2 = _norm(planes, BLOCK_BN_MOMENTUM)
        self.downsample = (
            nn.Sequential(_conv(inplanes, planes, 1), _norm(planes, BN_MOMENTUM)) if inplanes != planes else None
        )
        self.relu = _relu()

    def forward(self, x: Any) -> Any:
        out = self.norm2(self.conv2(self.relu(self.norm1(self.conv1(x)))))
        residual = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + residual)


def _stage(inplanes: int, planes: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(BasicBlock(inplanes if i == 0 else planes, planes) for i in range(blocks)))


class Res16UNet34(nn.Module):
    """Res16UNet34 (conv1_kernel_size 3, no `final`) on MinkowskiEngine; forward(SparseTensor) → block8's output."""

    ENCODER = (("conv1p1s2", "bn1", "block1"), ("conv2p2s2", "bn2", "block2"))
    ENCODER += (("conv3p4s2", "bn3", "block3"), ("conv4p8s2", "bn4", "block4"))
    DECODER = (("convtr4p16s2", "bntr4", "block5"), ("convtr5p8s2", "bntr5", "block6"))
    DECODER += (("convtr6p4s2", "bntr6", "block7"), ("convtr7p2s2", "bntr7", "block8"))

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.conv0p1s1 = _conv(in_channels, INIT_DIM, CONV1_KERNEL_SIZE)
        self.bn0 = _norm(INIT_DIM, BN_MOMENTUM)
        self.relu = _relu()
        inplanes = INIT_DIM
        for level, (conv, bn, block) in enumerate(self.ENCODER):
            self.add_module(conv, _conv(inplanes, inplanes, 2, stride=2))
            self.add_module(bn, _norm(inplanes, BN_MOMENTUM))
            self.add_module(block, _stage(inplanes, PLANES[level], LAYERS[level]))
            inplanes = PLANES[level]
        skips = (PLANES[2], PLANES[1], PLANES[0], INIT_DIM)
        for level, ((conv, bn, block), skip) in enumerate(zip(self.DECODER, skips, strict=True), start=4):
            self.add_module(conv, _conv(inplanes, PLANES[level], 2, stride=2, transpose=True))
            self.add_module(bn, _norm(PLANES[level], BN_MOMENTUM))
            self.add_module(block, _stage(PLANES[level] + skip, PLANES[level], LAYERS[level]))
            inplanes = PLANES[level]

    def forward(self, x: Any) -> Any:
        ME = import_minkowski()
        out = self.relu(self.bn0(self.conv0p1s1(x)))
        skips = [out]
        for conv, bn, block in self.ENCODER:
            out = getattr(self, block)(self.relu(getattr(self, bn)(getattr(self, conv)(out))))
            skips.append(out)
        skips.pop()  # block4's output is the bottom, not a skip
        for conv, bn, block in self.DECODER:
            up = self.relu(getattr(self, bn)(getattr(self, conv)(out)))  # back on the skip's coordinate map
            out = getattr(self, block)(ME.cat(up, skips.pop()))
        return out


def to_sparse_tensor(voxels: Mapping[str, Any], features: torch.Tensor) -> Any:
    """A MinkowskiEngine SparseTensor of a `collate_voxels` batch (coords reordered to batch, x, y, z)."""
    ME = import_minkowski()
    coords = voxels["coords"][:, ZYX_TO_XYZ].int().contiguous()
    return ME.SparseTensor(features, coordinates=coords.to(features.device))


def batch_max_pool(x: Any, batch_size: int) -> torch.Tensor:
    """Per-sample max over a SparseTensor's rows → [batch_size, C] (MinkowskiGlobalMaxPooling's result)."""
    return per_sample_max(x.F, x.C[:, 0], batch_size)


class MinkUNet34MEEncoder(Res16UNet34):
    """Res16UNet34 + global max-pool of block8 + MLP head: the `collate_voxels` dict → [batch_size, head_dims[-1]].
    Input features as the spconv encoder's (models/minkunet.py): the voxel's features after x, y, z, else 1."""

    def __init__(self, in_channels: int, head_dims: Sequence[int] = ORIGINAL_HEAD_DIMS):
        super().__init__(in_channels)
        self.head = projection_head(head_dims)
        self.head_dims = tuple(head_dims)

    def __deepcopy__(self, memo: dict[int, Any]) -> MinkUNet34MEEncoder:
        """A new encoder with copies of this one's tensors (the momentum key encoder is a deep copy). copy.deepcopy
        of the modules themselves would drop MinkowskiEngine's __slots__ attributes (`dimension`, ...)."""
        clone = type(self)(self.in_channels, self.head_dims)
        clone.load_state_dict({key: copy.deepcopy(tensor, memo) for key, tensor in self.state_dict().items()})
        for mine, theirs in zip(clone.parameters(), self.parameters(), strict=True):
            mine.requires_grad_(theirs.requires_grad)
        return clone.to(next(self.parameters()).device).train(self.training)

    def forward(self, voxels: Mapping[str, Any]) -> torch.Tensor:  # type: ignore[override]
        out = super().forward(to_sparse_tensor(voxels, network_input(voxels, self.in_channels)))
        return self.head(batch_max_pool(out, int(voxels["batch_size"])))
