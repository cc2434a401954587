"""The settings a downstream model must have for an export of it to fit (each export's sidecar
`downstream_config`), from the exported encoder's spec."""

from __future__ import annotations

from typing import Any

from depthcontrast.export.minkowski import CONV1_KERNEL_SIZE
from depthcontrast.export.openpcdet_reference import OPENPCDET_XYZ_CHANNELS
from depthcontrast.specs import MSGBackbone, VoxelBackbone


def _lists(value: Any) -> Any:
    """A spec's tuples (at any depth) as the lists a detector config holds."""
    return [_lists(item) for item in value] if isinstance(value, tuple) else value


def openpcdet_backbone_config(spec: MSGBackbone) -> dict[str, Any]:
    """The OpenPCDet settings a PointNet-MSG run's export fits: BACKBONE_3D and the point features.

    OpenPCDet skips, without an error, every pretrained tensor whose shape differs from the detector's,
    so the detector config must have these MLPS, FP_MLPS and input channels (NPOINTS, RADIUS and NSAMPLE
    hold no weights: the detector may use its own).
    """
    features = spec.features
    return {
        "BACKBONE_3D": {
            "NAME": "PointNet2MSG",
            "SA_CONFIG": {
                "NPOINTS": _lists(spec.npoints),
                "RADIUS": _lists(spec.radius),
                "NSAMPLE": _lists(spec.nsample),
                "MLPS": _lists(spec.mlps),
            },
            "FP_MLPS": _lists(spec.fp_mlps),
        },
        "input_channels": OPENPCDET_XYZ_CHANNELS + features.channels,
        "used_feature_list": ["x", "y", "z", *features.names],
    }


def openpcdet_unet_config(spec: VoxelBackbone) -> dict[str, Any]:
    """The OpenPCDet settings a sparse-UNet run's export fits (Part-A2-free: MeanVFE + UNetV2 without conv_out).

    The weights' shapes fix only the VFE's input channels (x, y, z + point features); the voxel size and
    range are the pretraining run's, listed so the detector's voxels can be chosen alike.
    """
    features = spec.features
    return {
        "VFE": {"NAME": "MeanVFE"},
        "BACKBONE_3D": {"NAME": "UNetV2", "RETURN_ENCODED_TENSOR": False},
        "input_channels": OPENPCDET_XYZ_CHANNELS + features.channels,
        "used_feature_list": ["x", "y", "z", *features.names],
        "VOXEL_SIZE": list(spec.grid.voxel_size),
        "POINT_CLOUD_RANGE": list(spec.grid.point_range),
        "MAX_POINTS_PER_VOXEL": spec.grid.max_points_per_voxel,
        "weight_layout": {
            "model_state": "spconv 2.x [out, 3, 3, 3, in] (upstream OpenPCDet)",
            "classy_state_dict": "spconv 1.x [3, 3, 3, in, out] (the DepthContrast fork)",
        },
    }


def minkunet_seg_config(spec: VoxelBackbone) -> dict[str, Any]:
    """The SpatioTemporalSegmentation settings a MinkUNet34 run's export fits."""
    features = spec.features
    return {
        "model": "Res16UNet34",
        "conv1_kernel_size": CONV1_KERNEL_SIZE,
        "in_channels": features.channels or 1,
        "input_features": list(features.names) or ["constant 1"],
        "feature_scaling": "rgb / 255 - 0.5" if "rgb" in features.names else None,
        "voxel_size": list(spec.grid.voxel_size),
        "coordinate_order": "x, y, z (MinkowskiEngine coordinates = floor(xyz / voxel_size))",
        "weights": {
            "state_dict": "bare Res16UNet34 names, upstream STS main.py --weights (lenient_weight_loading: no `final`)",
            "model": "module.trunk.2.<name>, the DepthContrast STS fork's init_model_from_weights",
        },
        "kernel_layout": "MinkowskiEngine [kernel_volume, in, out]; 1x1x1 downsample convs [in, out]",
    }
