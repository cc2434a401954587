"""Import the released checkpoints of the original DepthContrast code (facebookresearch/DepthContrast
`checkpoint-epNNN.pth.tar`).

Such a checkpoint is a torch.save dict: `epoch`, `model` (DDP state_dict,
`module.trunk.0.*` point query encoder, `module.trunk.1.*` its momentum copy and, for joint
models (`pointnet_unet_joint`), `module.trunk.{2,3}.*` the voxel query encoder and its momentum copy),
`optimizer` and `train_criterion` (`queue` [128, K], `queue_ptr`, for joint models `queue_other`,
`queue_other_ptr`). It becomes one of our checkpoints: the encoders and queues as a DepthContrast
state_dict, and a run config inferred from the tensor shapes. The optimizer is not imported
(continuing from an import restarts it).

A joint model's voxel trunks are MinkowskiEngine-0.4 Res16UNet34s (`conv0p1s1.kernel`, `bn0.bn.weight`,
`block1.0.conv1.kernel`, ..., block kernels in 0.4's HYBRID plane order) with an SMLP head of
MinkowskiLinear layers (`head.clf.<i>.linear.*`, no ReLU between them). They become our MinkUNet34 voxel
encoders on the chosen stack (`voxel_stack`): on MinkowskiEngine 0.5.4 the block kernels are reordered to
its HYPER_CUBE order; on spconv every kernel is also converted to spconv's layout (export/minkowski.py; both
exact). Our head has a ReLU between its linears, so the imported head holds the original's weights but is
not the same function; the trunk is. The run config is the original's indoor joint run (PointNet++ +
MinkUNet34, loss_types NPID and CMC, every weight 0.5).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import torch

from depthcontrast.architectures import MINKOWSKI, SPCONV, VOXEL_STACKS
from depthcontrast.checkpoint import CHECKPOINT_FORMAT, NOT_PICKLED, PICKLED, save_checkpoint, saved_file_kind
from depthcontrast.config import validate_config
from depthcontrast.errors import DataError
from depthcontrast.export.minkowski import LAYOUT_04, LAYOUT_05, PLANES, Res16UNet34StandIn, relayout, spconv_state
from depthcontrast.io_utils import sha256_file
from depthcontrast.models.pointnet2 import SA_WIDTHS
from depthcontrast.specs import parse_run
from depthcontrast.train import build_model

log = logging.getLogger(__name__)
TRUNK_PATTERN = re.compile(r"^(?:module\.)?trunk\.(\d+)\.(.+)$")
POINT_TRUNKS = {0: "query_encoders.point.", 1: "key_encoders.point."}
VOXEL_TRUNKS = {2: "query_encoders.voxel.", 3: "key_encoders.voxel."}
QUEUE_KEYS = {"queue": "queue_point", "queue_ptr": "queue_ptr_point"}
VOXEL_QUEUE_KEYS = {"queue_other": "queue_voxel", "queue_other_ptr": "queue_ptr_voxel"}
SMLP_PATTERN = re.compile(r"^head\.clf\.(\d+)\.linear\.(weight|bias)$")  # the original's MinkowskiLinear head
VOXEL_INPUT_KEY = "conv0p1s1.kernel"
VOXEL_FEATURES = {3: ["rgb"], 1: []}  # input channels → voxel_backbone.features (RGB, or a constant 1)
VOXEL_EMBEDDING_CHANNELS = PLANES[-1]  # block8's width, the voxel head's input
# the original's indoor joint run (point_vox_template): within- and cross-format NPID, all four terms at 0.5
JOINT_LOSS = {"loss_types": ["NPID", "CMC"], "within_format_weights": [0.5, 0.5], "across_format_weights": [0.5, 0.5]}
OPTIMIZER_NOTE = "optimizer state not imported: resuming restarts the optimizer"
HEAD_NOTE = (
    "the voxel head holds the original SMLP's weights (head.clf.<i>.linear.* → head.clf.<2i>.*), but ours has a ReLU "
    "between its linears and the original's has none, so the imported head is not the same function; the voxel "
    "trunk is exact"
)
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


def infer_run_config(
    path: Path,
    point_trunk: Mapping[str, torch.Tensor],
    queue: torch.Tensor,
    voxel: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A validated run config (the original code's defaults) whose model has the trunk's and queue's shapes;
    with `voxel` (the voxel_backbone block of a joint model) the original's indoor joint run."""
    embedding_dim, queue_size = (int(n) for n in queue.shape)
    run: dict[str, Any] = {
        "datasets": [ORIGINAL_DATASET],
        "backbone": {"scale": _scale(path, point_trunk), "head_dims": _head_dims(path, point_trunk)},
        "loss": {"num_negatives": queue_size, "embedding_dim": embedding_dim},
    }
    if voxel is not None:
        run["representations"] = ["point", "voxel"]
        run["voxel_backbone"] = dict(voxel)
        run["loss"].update(JOINT_LOSS)
    config = {"datasets": {ORIGINAL_DATASET: {"source": {"kind": ORIGINAL_DATASET}}}, "pretrain": {"original": run}}
    return validate_config(config, source=f"{path} (inferred run config)")["pretrain"]["original"]


# ------------------------------------------------------------------ the voxel trunks of joint models
def _smlp_dims(path: Path, trunk: Mapping[str, torch.Tensor]) -> list[int]:
    """Widths of the original's SMLP head from its MinkowskiLinear weights [out, in], in layer order."""
    weights = {
        int(m.group(1)): tensor
        for key, tensor in trunk.items()
        if (m := SMLP_PATTERN.match(key)) and key.endswith("weight")
    }
    if not weights:
        raise OriginalImportError(
            f"{path}: module.trunk.2.head.clf.0.linear.weight is missing: the voxel trunk has no SMLP projection head"
        )
    for index in range(len(weights)):
        if index not in weights or weights[index].ndim != 2:
            raise OriginalImportError(
                f"{path}: module.trunk.2.head.clf.{index}.linear.weight is missing or not a [out, in] matrix"
            )
    dims = [int(weights[0].shape[1])] + [int(weights[i].shape[0]) for i in range(len(weights))]
    if dims[0] != VOXEL_EMBEDDING_CHANNELS:
        raise OriginalImportError(
            f"{path}: module.trunk.2.head.clf.0.linear.weight takes {dims[0]} channels, block8 gives "
            f"{VOXEL_EMBEDDING_CHANNELS}: not a MinkUNet34 (Res16UNet34) voxel trunk"
        )
    return dims


def _voxel_shapes(path: Path, trunk: Mapping[str, torch.Tensor]) -> tuple[dict[str, tuple[int, ...]], list[int]]:
    """The key → shape of a MinkowskiEngine Res16UNet34 with the trunk's input width and SMLP head (the original's
    names), and the head's widths."""
    first = trunk.get(VOXEL_INPUT_KEY)
    if first is None or first.ndim != 3:
        raise OriginalImportError(
            f"{path}: module.trunk.2.{VOXEL_INPUT_KEY} is missing or not a [27, in, 32] kernel: not a MinkUNet34 "
            "(Res16UNet34) voxel trunk"
        )
    channels = int(first.shape[1])
    if channels not in VOXEL_FEATURES:
        raise OriginalImportError(
            f"{path}: module.trunk.2.{VOXEL_INPUT_KEY} reads {channels} input channels; the original's voxel trunk "
            "reads RGB (3) or a constant (1)"
        )
    shapes = {key: tuple(tensor.shape) for key, tensor in Res16UNet34StandIn(channels).state_dict().items()}
    dims = _smlp_dims(path, trunk)
    for i, (cin, cout) in enumerate(pairwise(dims)):
        shapes[f"head.clf.{i}.linear.weight"] = (cout, cin)
        shapes[f"head.clf.{i}.linear.bias"] = (cout,)
    return shapes, dims


def _check_voxel_trunk(path: Path, index: int, trunk: Mapping[str, torch.Tensor], shapes: Mapping[str, tuple]) -> None:
    """One line naming the file and the first key that is missing, unexpected or of the wrong shape."""
    name = f"module.trunk.{index}."
    for key, shape in shapes.items():
        if key not in trunk:
            raise OriginalImportError(
                f"{path}: {name}{key} is missing: not a complete MinkUNet34 (Res16UNet34) voxel trunk"
            )
        if tuple(trunk[key].shape) != shape:
            raise OriginalImportError(
                f"{path}: {name}{key} has shape {list(trunk[key].shape)}, a Res16UNet34 voxel trunk with "
                f"this input and head has {list(shape)}"
            )
    unexpected = sorted(set(trunk) - set(shapes))
    if unexpected:
        raise OriginalImportError(
            f"{path}: unexpected key {name}{unexpected[0]} in the MinkUNet34 (Res16UNet34) voxel trunk"
        )


def _our_voxel_encoder(trunk: Mapping[str, torch.Tensor], stack: str) -> dict[str, torch.Tensor]:
    """An original (MinkowskiEngine 0.4) voxel trunk → our MinkUNet34 encoder's state_dict on `stack`."""
    head = {}
    backbone = {}
    for key, tensor in trunk.items():
        match = SMLP_PATTERN.match(key)
        if match:
            head[f"head.clf.{2 * int(match.group(1))}.{match.group(2)}"] = tensor
        else:
            backbone[key] = tensor
    if stack == MINKOWSKI:  # the same kernels, the block convs' planes in 0.5.4's HYPER_CUBE order
        return relayout(backbone, LAYOUT_04, LAYOUT_05) | head
    return spconv_state(backbone, LAYOUT_04) | head


def _voxel_trunks(
    path: Path, trunks: Mapping[int, Mapping[str, torch.Tensor]], criterion: Mapping[str, Any], stack: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """A joint model's voxel encoders and queue as our state_dict entries and its voxel_backbone block; None
    for a point-only model."""
    present = [index for index in VOXEL_TRUNKS if index in trunks]
    queued = [key for key in VOXEL_QUEUE_KEYS if key in criterion]
    if not present and not queued:
        return None
    if stack not in VOXEL_STACKS:
        raise OriginalImportError(f"voxel stack {stack!r} is not one of {', '.join(VOXEL_STACKS)}")
    for index in VOXEL_TRUNKS:
        if index not in trunks:
            raise OriginalImportError(
                f"{path}: no module.trunk.{index}.* keys: a joint model needs both voxel trunks (2 and 3)"
            )
    for key in VOXEL_QUEUE_KEYS:
        if key not in criterion:
            raise OriginalImportError(f"{path}: train_criterion.{key} is missing: a joint model has a voxel queue")
    queue, other = criterion["queue"], criterion["queue_other"]
    if not isinstance(other, torch.Tensor) or tuple(other.shape) != tuple(queue.shape):
        shape = list(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__
        raise OriginalImportError(
            f"{path}: train_criterion.queue_other is {shape}, it must have the point queue's shape {list(queue.shape)}"
        )
    shapes, dims = _voxel_shapes(path, trunks[2])
    for index in VOXEL_TRUNKS:
        _check_voxel_trunk(path, index, trunks[index], shapes)
    if dims[-1] != int(queue.shape[0]):
        raise OriginalImportError(
            f"{path}: the voxel head ends at {dims[-1]} channels, the queues hold {int(queue.shape[0])}"
        )
    state = {
        prefix + key: tensor
        for index, prefix in VOXEL_TRUNKS.items()
        for key, tensor in _our_voxel_encoder(trunks[index], stack).items()
    }
    state.update({ours: criterion[theirs] for theirs, ours in VOXEL_QUEUE_KEYS.items()})
    block = {
        "name": "minkunet",
        "stack": stack,
        "features": VOXEL_FEATURES[int(trunks[2][VOXEL_INPUT_KEY].shape[1])],
        "head_dims": dims,
    }
    return state, block


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


def import_original_checkpoint(path: Path, out: Path, trust_pickle: bool = False, voxel_stack: str = SPCONV) -> Path:
    """Convert a `checkpoint-epNNN.pth.tar` of the original DepthContrast code into our checkpoint format at `out`;
    return `out`.

    The model loads strictly into `build_model(parse_run(state["config"]))`; a joint model's voxel trunks become
    MinkUNet34 encoders on `voxel_stack` (spconv or minkowski). `imported_from` records the source, its sha256
    and what was left out (the optimizer).
    """
    path, out = Path(path), Path(out)
    state = read_original_checkpoint(path, trust_pickle=trust_pickle)
    trunks = _split_trunks(path, state["model"])
    criterion = _criterion(path, state)
    voxel = _voxel_trunks(path, trunks, criterion, voxel_stack)
    config = infer_run_config(path, trunks[0], criterion["queue"], voxel[1] if voxel else None)

    model_state = {
        prefix + key: tensor for index, prefix in POINT_TRUNKS.items() for key, tensor in trunks[index].items()
    }
    model_state.update({ours: criterion[theirs] for theirs, ours in QUEUE_KEYS.items()})
    if voxel:
        model_state.update(voxel[0])
    model = build_model(parse_run(config))
    try:
        model.load_state_dict(model_state, strict=True)
    except RuntimeError as exc:
        problems = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise OriginalImportError(f"{path}: the trunks do not fit the inferred model: {problems}") from None

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
                "left_out": ["optimizer"],
                "note": f"{OPTIMIZER_NOTE}; {HEAD_NOTE}" if voxel else OPTIMIZER_NOTE,
            },
        },
    )
    what = f"{config['backbone']['scale']}x PointNet++" + (f" + MinkUNet34 on {voxel_stack}" if voxel else "")
    log.info("imported %s (%s, epoch %s) to %s", path, what, state.get("epoch"), out)
    return out
