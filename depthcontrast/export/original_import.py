"""Import the released checkpoints of the original DepthContrast code (facebookresearch/DepthContrast
`checkpoint-epNNN.pth.tar`).

Such a checkpoint is a torch.save dict: `epoch`, `model` (DDP state_dict,
`module.trunk.0.*` point query encoder, `module.trunk.1.*` its momentum copy and, for joint
models, `module.trunk.{2,3}.*` MinkUNet voxel encoders), `optimizer` and `train_criterion`
(`queue` [128, K], `queue_ptr`, optionally `queue_other`, `queue_other_ptr`). It becomes one of
our checkpoints: the point encoders and queue as a DepthContrast state_dict, and a run config
inferred from the tensor shapes. The optimizer is not imported (continuing from an import
restarts it); the voxel trunks are left out until the MinkowskiEngine stack is in this package.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from depthcontrast.checkpoint import CHECKPOINT_FORMAT, NOT_PICKLED, PICKLED, save_checkpoint, saved_file_kind
from depthcontrast.config import validate_config
from depthcontrast.errors import DataError
from depthcontrast.io_utils import sha256_file
from depthcontrast.models.pointnet2 import SA_WIDTHS
from depthcontrast.specs import parse_run
from depthcontrast.train import build_model

log = logging.getLogger(__name__)
TRUNK_PATTERN = re.compile(r"^(?:module\.)?trunk\.(\d+)\.(.+)$")
POINT_TRUNKS = {0: "query_encoders.point.", 1: "key_encoders.point."}
VOXEL_TRUNKS = {2: "voxel query encoder (MinkUNet)", 3: "voxel key encoder (MinkUNet)"}
QUEUE_KEYS = {"queue": "queue_point", "queue_ptr": "queue_ptr_point"}
VOXEL_QUEUE_KEYS = ("queue_other", "queue_other_ptr")
SA1_FIRST_KEY = "sa1.mlp_module.layer0.conv.weight"
SA1_BASE_WIDTH = SA_WIDTHS[0][0]  # sa1's first layer has 64·scale output channels
HEAD_WEIGHT_PATTERN = re.compile(r"^head\.clf\.(\d+)\.weight$")
ORIGINAL_DATASET = "scannet"  # the released models were pretrained on ScanNet depth frames
ORIGINAL_SOURCE = "facebookresearch/DepthContrast CheckpointManager"


class OriginalImportError(DataError):
    """A file is not a readable checkpoint of the original DepthContrast code of a kind this package can import."""


def read_original_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, Any]:
    """torch.load a checkpoint of the original DepthContrast code without running pickled code unless
    `trust_pickle` is set."""
    path = Path(path)
    if not path.is_file():
        raise OriginalImportError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... for unsafe, damaged or foreign files
        raise _unloadable(path, exc) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), Mapping):
        raise OriginalImportError(
            f"{path}: not a checkpoint of the original DepthContrast code (no `model` state_dict)"
        )
    if state.get("format") == CHECKPOINT_FORMAT:
        raise OriginalImportError(f"{path}: already a depthcontrast-pipeline checkpoint; export it directly")
    return state


def _unloadable(path: Path, exc: Exception) -> OriginalImportError:
    """Why torch.load failed: not a checkpoint at all, a real pickle that weights-only loading refused (only then
    is --trust-pickle the way on), or a damaged file."""
    kind = saved_file_kind(path)
    if kind == NOT_PICKLED:
        with open(path, "rb") as handle:
            head = handle.read(16)
        return OriginalImportError(
            f"{path}: not a checkpoint: neither a torch.save file nor a pickle (it starts with {head!r}); give a "
            "checkpoint-epNNN.pth.tar of the original DepthContrast code"
        )
    if kind == PICKLED and "weights only load failed" in str(exc).lower():
        return OriginalImportError(
            f"{path}: holds pickled objects other than tensors and plain containers, and loading them would run "
            "code from the file; if you trust where it came from, import with trust_pickle=True (--trust-pickle)"
        )
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OriginalImportError(f"{path}: checkpoint is truncated or corrupt ({type(exc).__name__}: {first})")


def _split_trunks(path: Path, model: Mapping[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    """Trunk index → that trunk's state_dict under its own names."""
    trunks: dict[int, dict[str, torch.Tensor]] = {}
    for key, tensor in model.items():
        match = TRUNK_PATTERN.match(key)
        if match is None:
            raise OriginalImportError(f"{path}: unexpected model key {key!r} (expected module.trunk.<i>.<name>)")
        trunks.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    missing = [index for index in POINT_TRUNKS if index not in trunks]
    if missing:
        raise OriginalImportError(
            f"{path}: no module.trunk.{missing[0]}.* keys: not a PointNet++ DepthContrast checkpoint"
        )
    unknown = sorted(set(trunks) - set(POINT_TRUNKS) - set(VOXEL_TRUNKS))
    if unknown:
        raise OriginalImportError(f"{path}: unexpected trunk index {unknown[0]} (the original code saves trunks 0-3)")
    return trunks


def _head_dims(path: Path, trunk: Mapping[str, torch.Tensor]) -> list[int]:
    """Widths of the projection MLP from its Linear weights [out, in], in layer order."""
    layers = sorted((int(m.group(1)), tensor) for key, tensor in trunk.items() if (m := HEAD_WEIGHT_PATTERN.match(key)))
    if not layers:
        raise OriginalImportError(f"{path}: the point trunk has no projection head (head.clf.<i>.weight)")
    return [int(layers[0][1].shape[1])] + [int(tensor.shape[0]) for _, tensor in layers]


def _scale(path: Path, trunk: Mapping[str, torch.Tensor]) -> int:
    if SA1_FIRST_KEY not in trunk:
        raise OriginalImportError(f"{path}: the point trunk lacks {SA1_FIRST_KEY}: not a PointNet++ SSG backbone")
    width = int(trunk[SA1_FIRST_KEY].shape[0])
    if width % SA1_BASE_WIDTH:
        raise OriginalImportError(f"{path}: sa1 width {width} is not a multiple of {SA1_BASE_WIDTH}")
    return width // SA1_BASE_WIDTH


def infer_run_config(path: Path, point_trunk: Mapping[str, torch.Tensor], queue: torch.Tensor) -> dict[str, Any]:
    """A validated run config (the original code's defaults) whose model has the trunk's and queue's shapes."""
    embedding_dim, queue_size = (int(n) for n in queue.shape)
    run = {
        "datasets": [ORIGINAL_DATASET],
        "backbone": {"scale": _scale(path, point_trunk), "head_dims": _head_dims(path, point_trunk)},
        "loss": {"num_negatives": queue_size, "embedding_dim": embedding_dim},
    }
    config = {"datasets": {ORIGINAL_DATASET: {"source": {"kind": ORIGINAL_DATASET}}}, "pretrain": {"original": run}}
    return validate_config(config, source=f"{path} (inferred run config)")["pretrain"]["original"]


def _criterion(path: Path, state: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    criterion = state.get("train_criterion")
    if not isinstance(criterion, Mapping) or any(key not in criterion for key in QUEUE_KEYS):
        raise OriginalImportError(
            f"{path}: no train_criterion queue / queue_ptr: not a complete checkpoint of the original DepthContrast "
            "code"
        )
    queue = criterion["queue"]
    if not isinstance(queue, torch.Tensor) or queue.ndim != 2:
        raise OriginalImportError(f"{path}: train_criterion.queue must be a [embedding_dim, K] tensor")
    return criterion


def import_original_checkpoint(path: Path, out: Path, trust_pickle: bool = False) -> Path:
    """Convert a `checkpoint-epNNN.pth.tar` of the original DepthContrast code into our checkpoint format at `out`;
    return `out`.

    The model loads strictly into `build_model(parse_run(state["config"]))`. `imported_from` records the source,
    its sha256 and what was left out (voxel trunks and queue of joint models, the optimizer).
    """
    path, out = Path(path), Path(out)
    state = read_original_checkpoint(path, trust_pickle=trust_pickle)
    trunks = _split_trunks(path, state["model"])
    criterion = _criterion(path, state)
    config = infer_run_config(path, trunks[0], criterion["queue"])

    model_state = {
        prefix + key: tensor for index, prefix in POINT_TRUNKS.items() for key, tensor in trunks[index].items()
    }
    model_state.update({ours: criterion[theirs] for theirs, ours in QUEUE_KEYS.items()})
    model = build_model(parse_run(config))
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        problems = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise OriginalImportError(f"{path}: the point trunks do not fit the inferred model: {problems}") from None

    left_out = [f"module.trunk.{index}.* ({VOXEL_TRUNKS[index]})" for index in sorted(trunks) if index in VOXEL_TRUNKS]
    left_out += [f"train_criterion.{key}" for key in VOXEL_QUEUE_KEYS if key in criterion]
    if left_out:
        log.warning(
            "%s: left out %s: the MinkowskiEngine voxel stack is not in this package yet", path, ", ".join(left_out)
        )
    save_checkpoint(
        out,
        {
            "model": model.state_dict(),
            "optimizer": None,  # not imported: continuing pretraining from an import restarts the optimizer
            "epoch": int(state.get("epoch", 0)),
            "step": None,  # the original code does not record it
            "run_name": path.name.split(".")[0],
            "config": config,
            "imported_from": {
                "path": str(path),
                "sha256": sha256_file(path),
                "source": ORIGINAL_SOURCE,
                "left_out": left_out,
                "note": "optimizer state not imported: resuming restarts the optimizer",
            },
        },
    )
    log.info("imported %s (%dx PointNet++, epoch %s) to %s", path, config["backbone"]["scale"], state.get("epoch"), out)
    return out
