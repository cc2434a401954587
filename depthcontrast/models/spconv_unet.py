"""Part-A2's sparse-conv UNet (OpenPCDet `UNetV2`, DepthContrast's `UNetV2_concat`) on spconv 2.x.

The only module that imports spconv; encoders.py imports it when a run asks for a voxel encoder.
Architecture (OpenPCDet pcdet/models/backbones_3d/spconv_unet.py), every BatchNorm1d
with eps 1e-3 and momentum 0.01, every conv without bias:
- conv_input: SubM 3³ (C → 16) + BN + ReLU; conv1: one SubM block 16;
- conv2 / conv3: a strided (2) sparse conv 16→32 / 32→64, padding 1, then two SubM blocks;
- conv4: strided conv 64→64 with padding (0, 1, 1), then two SubM blocks;
- decoder, from the deepest level up (UR block): `conv_up_t{k}` (a residual SparseBasicBlock) on the
  lateral features, concatenated with the features coming up, `conv_up_m{k}` (SubM block), plus the
  concatenation summed down to the same width, then `inv_conv{k}` (the inverse of conv{k}'s
  downsampling) or, at the top, `conv5`.
No `conv_out` (OpenPCDet's RETURN_ENCODED_TENSOR: False, as Part-A2-free): the original does not use it.
Module names are OpenPCDet's, so `backbone_3d.<key>` loads into UNetV2 as it is; conv weights have
spconv 2.x's layout [out, k, k, k, in].

The encoder DepthContrast trains (the original's `UNetV2_concat`): per-sample max-pools of the four decoder
outputs (64 + 32 + 16 + 16 = 128 channels) concatenated, then the projection head (the original's: 128, 128, 128).

CPU training: spconv 2.3.8's CPU build fails in backward because `spconv.pytorch.ops` asks
`torch.cuda.current_stream()` for a stream before looking at the tensors' device. Without CUDA the
stream is never used, so `_patch_cpu_stream` makes that lookup return 0 (the null stream) then.
Its CPU kernels also lose a sum now and then unless the process starts with one OpenMP thread (a few output rows
wrong, run to run; measured against a real MinkowskiEngine and a direct evaluation; setting the thread counts
after start-up does not help): `depthcontrast pretrain` restarts CPU voxel runs with OMP_NUM_THREADS=1
(depthcontrast/cli.py), and the tests set it before torch loads (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from depthcontrast.errors import ConfigError, DepthContrastError
from depthcontrast.models.heads import MLPHead, per_sample_max

SPCONV_HINT = (
    "the sparse UNet needs spconv 2.x: install the package's `voxel` extra (pip install -e '.[voxel]', the CPU "
    "build spconv==2.3.8; `python3 bootstrap.py` installs it) or run in the docker/spconv container (GPU)"
)


class MissingStackError(DepthContrastError):
    """An optional heavy stack (spconv, MinkowskiEngine) that a run needs is not installed."""


try:
    import spconv.pytorch as spconv
    import spconv.pytorch.ops as spconv_ops
except ImportError as exc:  # pragma: no cover - exercised only where spconv is absent
    raise MissingStackError(f"cannot import spconv ({exc}): {SPCONV_HINT}") from None


def _patch_cpu_stream() -> None:
    """Without CUDA, make spconv.pytorch.ops' stream lookup return the null stream (see the docstring)."""
    if torch.cuda.is_available():
        return
    assert hasattr(spconv_ops, "get_current_stream"), (
        "spconv.pytorch.ops.get_current_stream is gone: this spconv differs from 2.3.8; revisit _patch_cpu_stream"
    )
    if getattr(spconv_ops.get_current_stream, "_depthcontrast_cpu", False):
        return

    def null_stream() -> int:
        return 0

    null_stream._depthcontrast_cpu = True  # type: ignore[attr-defined]
    spconv_ops.get_current_stream = null_stream


_patch_cpu_stream()

UNET_CHANNELS = 16  # conv_input / conv1 / conv5 width
EMBEDDING_CHANNELS = 64 + 32 + 16 + 16  # the four decoder outputs, pooled and concatenated
ORIGINAL_HEAD_DIMS = (128, 128, 128)  # the original's mlp_dim for UNetV2
DOWNSAMPLE_KERNEL = 3
DOWNSAMPLINGS = ((1, 1, 1), (1, 1, 1), (0, 1, 1))  # paddings of conv2, conv3, conv4 (z, y, x)


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=1e-3, momentum=0.01)


def _block(cin: int, cout: int, key: str, conv: str = "subm", stride: int = 1, padding: Any = 1) -> nn.Module:
    """OpenPCDet's post_act_block: a sparse conv (SubM, strided, or inverse) + BN + ReLU, keys 0 / 1."""
    if conv == "subm":
        layer = spconv.SubMConv3d(cin, cout, 3, bias=False, indice_key=key)
    elif conv == "spconv":
        layer = spconv.SparseConv3d(cin, cout, 3, stride=stride, padding=padding, bias=False, indice_key=key)
    else:
        layer = spconv.SparseInverseConv3d(cin, cout, 3, indice_key=key, bias=False)
    return spconv.SparseSequential(layer, _norm(cout), nn.ReLU())


class SparseBasicBlock(spconv.SparseModule):
    """Residual block of two SubM convs (conv1/bn1, conv2/bn2) with the input added before the last ReLU."""

    def __init__(self, channels: int, key: str):
        super().__init__()
        self.conv1 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn1 = _norm(channels)
        self.relu = nn.ReLU()
        self.conv2 = spconv.SubMConv3d(channels, channels, 3, padding=1, bias=False, indice_key=key)
        self.bn2 = _norm(channels)

    def forward(self, x: Any) -> Any:
        out = self.conv1(x)
        out = out.replace_feature(self.relu(self.bn1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(self.relu(self.bn2(out.features) + x.features))


def min_sparse_depth() -> int:
    """The fewest z planes (sparse_shape[0]) that survive conv2..conv4's downsampling."""
    depth = 1
    for pad_z, _, _ in reversed(DOWNSAMPLINGS):
        depth = (depth - 1) * 2 + DOWNSAMPLE_KERNEL - 2 * pad_z
    return depth


class UNetV2(nn.Module):
    """OpenPCDet's UNetV2 backbone_3d (without conv_out) on voxels; forward returns the four decoder outputs."""

    def __init__(self, input_channels: int, sparse_shape: Sequence[int]):
        super().__init__()
        if sparse_shape[0] < min_sparse_depth():
            raise ConfigError(
                f"UNetV2: sparse shape {list(sparse_shape)} has {sparse_shape[0]} z planes; its three downsamplings "
                f"need at least {min_sparse_depth()}: widen point_range in z or use smaller voxels"
            )
        self.sparse_shape = list(sparse_shape)
        c = UNET_CHANNELS
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(input_channels, c, 3, padding=1, bias=False, indice_key="subm1"), _norm(c), nn.ReLU()
        )
        self.conv1 = spconv.SparseSequential(_block(c, c, "subm1"))
        widths = ((c, 32), (32, 64), (64, 64))
        for level, ((cin, cout), padding) in enumerate(zip(widths, DOWNSAMPLINGS, strict=True), start=2):
            self.add_module(
                f"conv{level}",
                spconv.SparseSequential(
                    _block(cin, cout, f"spconv{level}", "spconv", stride=2, padding=padding),
                    _block(cout, cout, f"subm{level}"),
                    _block(cout, cout, f"subm{level}"),
                ),
            )
        # decoder: (level, lateral width, output width)
        for level, lateral, out in ((4, 64, 64), (3, 64, 32), (2, 32, 16), (1, c, c)):
            self.add_module(f"conv_up_t{level}", SparseBasicBlock(lateral, f"subm{level}"))
            self.add_module(f"conv_up_m{level}", _block(2 * lateral, lateral, f"subm{level}"))
            if level > 1:
                self.add_module(f"inv_conv{level}", _block(lateral, out, f"spconv{level}", "inverseconv"))
        self.conv5 = spconv.SparseSequential(_block(c, c, "subm1"))

    @staticmethod
    def _up(lateral: Any, bottom: Any, conv_t: nn.Module, conv_m: nn.Module, conv_inv: nn.Module) -> Any:
        """OpenPCDet's UR_block_forward: residual lateral, concat, SubM block + channel-summed skip, upsample."""
        x_trans = conv_t(lateral)
        x = x_trans.replace_feature(torch.cat((bottom.features, x_trans.features), dim=1))
        x_m = conv_m(x)
        n, width = x.features.shape[0], x_m.features.shape[1]
        x = x.replace_feature(x_m.features + x.features.view(n, width, -1).sum(dim=2))
        return conv_inv(x)

    def forward(self, voxels: Mapping[str, Any]) -> list[Any]:
        """voxels: features [M, C], coords [M, 4] int (batch, z, y, x), batch_size → [x_up4, x_up3, x_up2, x_up1]."""
        x = spconv.SparseConvTensor(
            voxels["features"], voxels["coords"].int(), self.sparse_shape, int(voxels["batch_size"])
        )
        x_conv1 = self.conv1(self.conv_input(x))
        x_conv2 = self.conv2(x_conv1)
        x_conv3 = self.conv3(x_conv2)
        x_conv4 = self.conv4(x_conv3)
        x_up4 = self._up(x_conv4, x_conv4, self.conv_up_t4, self.conv_up_m4, self.inv_conv4)
        x_up3 = self._up(x_conv3, x_up4, self.conv_up_t3, self.conv_up_m3, self.inv_conv3)
        x_up2 = self._up(x_conv2, x_up3, self.conv_up_t2, self.conv_up_m2, self.inv_conv2)
        x_up1 = self._up(x_conv1, x_up2, self.conv_up_t1, self.conv_up_m1, self.conv5)
        return [x_up4, x_up3, x_up2, x_up1]


def batch_max_pool(tensor: Any, batch_size: int) -> torch.Tensor:
    """Per-sample max over a sparse tensor's voxels: [batch_size, C] (0 for a sample without voxels)."""
    return per_sample_max(tensor.features, tensor.indices[:, 0], batch_size)


class UNetV2Encoder(UNetV2):
    """UNetV2 + per-sample max-pools of its decoder outputs (concatenated, 128 channels) + MLP head.

    Input: the dict `collate_voxels` makes; output: embeddings [batch_size, head_dims[-1]]. State-dict keys:
    UNetV2's (OpenPCDet's backbone_3d names) plus `head.clf.*`.
    """

    def __init__(self, input_channels: int, sparse_shape: Sequence[int], head_dims: Sequence[int] = ORIGINAL_HEAD_DIMS):
        super().__init__(input_channels, sparse_shape)
        if head_dims[0] != EMBEDDING_CHANNELS:
            raise ConfigError(
                f"the sparse UNet head's first width must be {EMBEDDING_CHANNELS} (pooled decoder channels), "
                f"got {list(head_dims)}"
            )
        self.head = MLPHead(head_dims)

    def forward(self, voxels: Mapping[str, Any]) -> torch.Tensor:  # type: ignore[override]
        batch_size = int(voxels["batch_size"])
        pooled = [batch_max_pool(level, batch_size) for level in super().forward(voxels)]
        return self.head(torch.cat(pooled, dim=1))
