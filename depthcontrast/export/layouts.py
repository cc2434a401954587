"""Key layouts of the downstream codebases, as pure functions on state dicts (no files, no models).

Each `*_layout` maps an encoder's own state_dict (bare names: `sa1.mlp_module.layer0.conv.weight`,
`head.clf.0.weight`, ...) to the nested dict the downstream loader reads, and returns the
{encoder key: output key} map. Each `*_loader_view` reproduces, for verification, what that loader
does with the file: which names it hands to the downstream model.

Sources: the VoteNet fork's `init_model_from_weights` keeps `module.trunk.0.*`,
drops three dot components and prefixes `backbone_net.`; SpatioTemporalSegmentation's does the same
for `module.trunk.2.*` with bare MinkUNet names; upstream OpenPCDet (`--pretrained_model` →
`load_params_from_file` in pcdet/models/detectors/detector3d_template.py) reads `checkpoint['model_state']`
and copies each tensor whose key the detector has with the same shape, skipping the rest without an
error; the DepthContrast OpenPCDet fork (zaiweizhang/OpenPCDet tools/checkpoint.py) reads a
ClassyVision-style `classy_state_dict.base_model.model.trunk` dict keyed `<trunk index>.<name>`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]
KeyMap = dict[str, str]

HEAD_PREFIX = "head."  # the projection head: pretraining only, never loaded downstream
ORIGINAL_PREFIX = "module.trunk."  # DDP-wrapped ModuleList of the original's model
POINT_QUERY_TRUNK = 0  # the original's trunk indices: 0/1 point query/key, 2/3 voxel query/key
VOXEL_QUERY_TRUNK = 2
VOTENET_PREFIX = "backbone_net."
VOTENET_DROPPED_COMPONENTS = 3  # `module`, `trunk`, `0`
OPENPCDET_MODULE = "backbone_3d"  # the detector's 3D backbone, the only part the loaders fill
OPENPCDET_PREFIX = OPENPCDET_MODULE + "."


def is_head_key(key: str) -> bool:
    """True for projection-head keys, which downstream models do not have."""
    return key.startswith(HEAD_PREFIX)


def original_layout(encoder: StateDict, trunk: int) -> tuple[dict[str, torch.Tensor], KeyMap]:
    """Encoder keys under the original's `module.trunk.<trunk>.` prefix (head included, as the original saves it)."""
    key_map = {key: f"{ORIGINAL_PREFIX}{trunk}.{key}" for key in encoder}
    return {key_map[key]: tensor for key, tensor in encoder.items()}, key_map


def votenet_layout(point_encoder: StateDict) -> tuple[dict[str, torch.Tensor], KeyMap]:
    """`model` dict for VoteNet/H3DNet `--pre_checkpoint_path`: the point query encoder as trunk 0."""
    return original_layout(point_encoder, POINT_QUERY_TRUNK)


def votenet_loader_view(model: StateDict) -> dict[str, torch.Tensor]:
    """The names VoteNet's loader gives `model`'s tensors: trunk-0 keys as `backbone_net.<name>`."""
    marker = f"{ORIGINAL_PREFIX}{POINT_QUERY_TRUNK}"
    return {
        VOTENET_PREFIX + ".".join(key.split(".")[VOTENET_DROPPED_COMPONENTS:]): tensor
        for key, tensor in model.items()
        if marker in key
    }


def plain_layout(backbone: StateDict) -> tuple[dict[str, torch.Tensor], KeyMap]:
    """The backbone alone under its own names, projection head left out."""
    key_map = {key: key for key in backbone if not is_head_key(key)}
    return {key: backbone[key] for key in key_map}, key_map


def minkunet_seg_layout(voxel_encoder: StateDict) -> tuple[dict[str, torch.Tensor], KeyMap]:
    """`model` dict for SpatioTemporalSegmentation `--weights`: the voxel query encoder as trunk 2."""
    return original_layout(voxel_encoder, VOXEL_QUERY_TRUNK)


def minkunet_seg_loader_view(model: StateDict) -> dict[str, torch.Tensor]:
    """The bare MinkUNet names SpatioTemporalSegmentation's loader gives `model`'s trunk-2 tensors."""
    marker = f"{ORIGINAL_PREFIX}{VOXEL_QUERY_TRUNK}"
    return {
        ".".join(key.split(".")[VOTENET_DROPPED_COMPONENTS:]): tensor for key, tensor in model.items() if marker in key
    }


def openpcdet_layout(encoder: StateDict, trunk: int) -> tuple[dict[str, object], KeyMap]:
    """A file both OpenPCDet loaders read: `model_state` (upstream) and `classy_state_dict` (the fork).

    `model_state` holds the backbone under `backbone_3d.` (head left out); the fork's trunk dict holds
    the whole encoder keyed `<trunk>.<name>` (trunk 0 = PointNet-MSG, 2 = sparse UNet).
    """
    key_map = {key: OPENPCDET_PREFIX + key for key in encoder if not is_head_key(key)}
    model_state = {key_map[key]: encoder[key] for key in key_map}
    trunk_state = {f"{trunk}.{key}": tensor for key, tensor in encoder.items()}
    layout = {"model_state": model_state, "classy_state_dict": {"base_model": {"model": {"trunk": trunk_state}}}}
    return layout, key_map


def openpcdet_loader_view(
    model_state: StateDict, detector_state: StateDict
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """What upstream OpenPCDet's `load_params_from_file` copies into a detector with `detector_state`.

    Returns (the tensors it loads by detector key, the file's keys it skips: unknown or of another shape).
    """
    loaded, skipped = {}, []
    for key, tensor in model_state.items():
        if key in detector_state and detector_state[key].shape == tensor.shape:
            loaded[key] = tensor
        else:
            skipped.append(key)
    return loaded, sorted(skipped)


def openpcdet_fork_loader_view(layout: Mapping[str, object], model_keys: list[str]) -> dict[str, torch.Tensor]:
    """What the fork's loader copies into a detector whose state_dict has `model_keys`.

    For each key containing `backbone_3d`, the suffix after `backbone_3d` is looked up as
    `trunk.base_model.0<suffix>`, then `trunk.base_model.2<suffix>`.
    """
    trunk = layout["classy_state_dict"]["base_model"]["model"]["trunk"]  # type: ignore[index]
    available = {f"trunk.base_model.{key}": tensor for key, tensor in trunk.items()}
    view = {}
    for key in model_keys:
        if OPENPCDET_MODULE not in key:
            continue
        suffix = key[len(OPENPCDET_MODULE) :]
        for trunk_index in (POINT_QUERY_TRUNK, VOXEL_QUERY_TRUNK):
            source = f"trunk.base_model.{trunk_index}{suffix}"
            if source in available:
                view[key] = available[source]
                break
    return view


def spconv1_weights(state: StateDict) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`state` with every 3D sparse-conv weight moved from spconv 2.x's [out, k, k, k, in] layout to spconv
    1.x's [k, k, k, in, out] (the DepthContrast fork's spconv); returns (state, the keys moved)."""
    moved = sorted(key for key, tensor in state.items() if key.endswith("weight") and tensor.ndim == 5)
    out = dict(state)
    for key in moved:
        out[key] = state[key].permute(1, 2, 3, 4, 0).contiguous()
    return out, moved
