"""Export to downstream layouts (VoteNet/H3DNet, plain, OpenPCDet for PointNet-MSG and sparse-UNet runs, and
the voxel targets' layouts) and the import of the original DepthContrast code's released checkpoints, on real
checkpoints written by save_checkpoint / torch.save."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import re
import zipfile
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from depthcontrast.checkpoint import (
    DAMAGED,
    NOT_PICKLED,
    PICKLED,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    saved_file_kind,
)
from depthcontrast.config import validate_config
from depthcontrast.errors import ConfigError
from depthcontrast.export import ExportError, OriginalImportError, export_checkpoint, import_original_checkpoint
from depthcontrast.export.layouts import (
    minkunet_seg_layout,
    minkunet_seg_loader_view,
    openpcdet_fork_loader_view,
    openpcdet_layout,
)
from depthcontrast.io_utils import sha256_file
from depthcontrast.method import DepthContrast
from depthcontrast.models.heads import PointNetEncoder
from depthcontrast.models.pointnet2 import PointNet2SSG
from depthcontrast.specs import parse_run
from depthcontrast.train import build_model
from tests.conftest import run_cli
from tests.test_pointnet2_msg import pointrcnn_backbone_shapes

TINY_NPOINTS = (64, 32, 16, 8)
QUEUE = 64
EPOCH = 3
ORIGINAL_EPOCH = 150


def votenet_backbone_shapes(scale: int) -> dict[str, list[int]]:
    """Parameter shapes of the VoteNet fork's Pointnet2Backbone(input_feature_dim=0, SCALE), from its layer specs."""
    s = scale
    sa = {
        "sa1": [3, 64 * s, 64 * s, 128 * s],
        "sa2": [128 * s + 3, 128 * s, 128 * s, 256 * s],
        "sa3": [256 * s + 3, 128 * s, 128 * s, 256 * s],
        "sa4": [256 * s + 3, 128 * s, 128 * s, 256 * s],
    }
    fp = (
        {"fp1": [512, 512, 512], "fp2": [768, 512, 512]}
        if s == 1
        else {f"fp{i}": [512 * s, 256 * s, 256 * s] for i in (1, 2)}
    )
    shapes = {}
    for name, widths in [*((f"{k}.mlp_module", v) for k, v in sa.items()), *((f"{k}.mlp", v) for k, v in fp.items())]:
        for i, (cin, cout) in enumerate(pairwise(widths)):
            layer = f"backbone_net.{name}.layer{i}"
            shapes[f"{layer}.conv.weight"] = [cout, cin, 1, 1]
            for buffer in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{layer}.bn.bn.{buffer}"] = [cout]
            shapes[f"{layer}.bn.bn.num_batches_tracked"] = []
    return shapes


def forks_key_transformation(model: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VoteNet fork's documented rule: keep `module.trunk.0` keys, drop 3 components, prefix backbone_net."""
    return {"backbone_net." + ".".join(k.split(".")[3:]): v for k, v in model.items() if "module.trunk.0" in k}


class VoteNetStandIn(nn.Module):
    def __init__(self, scale: int):
        super().__init__()
        self.backbone_net = PointNet2SSG(scale=scale)


def randomise_buffers(module: nn.Module) -> None:
    """Non-default BN statistics, so a round trip that dropped or reset them would show."""
    for name, buffer in module.named_buffers():
        if "running" in name:
            buffer.copy_(torch.rand_like(buffer) + 0.5)
        elif "num_batches_tracked" in name:
            buffer.fill_(7)


def run_config(scale: int = 1, head: list[int] | None = None, queue: int = QUEUE) -> dict:
    run = {"datasets": ["d"], "backbone": {"scale": scale, "npoints": list(TINY_NPOINTS), "head_dims": head}}
    run["loss"] = {"num_negatives": queue}
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "indoor"}}}, "pretrain": {"r": run}}
    return validate_config(config)["pretrain"]["r"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 1x checkpoint as train.py writes it (both encoders, queue, config), with non-trivial buffers."""
    torch.manual_seed(0)
    model = DepthContrast({"point": lambda: PointNetEncoder(scale=1, npoints=TINY_NPOINTS)}, queue_size=QUEUE)
    with torch.no_grad():
        randomise_buffers(model)
        for param in model.key_encoders.parameters():
            param.add_(1.0)  # key encoder differs from the query encoder: an export of the wrong one would show
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    state = {"model": model.state_dict(), "optimizer": {}, "epoch": EPOCH, "step": 12, "config": run_config()}
    save_checkpoint(path, state)
    return path


def query_encoder(path: Path) -> dict[str, torch.Tensor]:
    prefix = "query_encoders.point."
    return {k[len(prefix) :]: v for k, v in load_checkpoint(path)["model"].items() if k.startswith(prefix)}


def test_votenet_export_loads_strictly_into_the_forks_backbone_with_exact_values(checkpoint: Path, tmp_path: Path):
    weights, _ = export_checkpoint(checkpoint, "votenet", tmp_path)
    exported = torch.load(weights, weights_only=True)
    assert exported["epoch"] == EPOCH
    source = query_encoder(checkpoint)
    assert set(exported["model"]) == {f"module.trunk.0.{k}" for k in source}  # query encoder only, head included

    renamed = forks_key_transformation(exported["model"])
    head = {k for k in renamed if k.startswith("backbone_net.head.")}
    assert head == {f"backbone_net.head.clf.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    backbone = {k: v for k, v in renamed.items() if k not in head}
    assert {k: list(v.shape) for k, v in backbone.items()} == votenet_backbone_shapes(1)
    VoteNetStandIn(scale=1).load_state_dict(backbone, strict=True)
    for key, tensor in source.items():
        out = exported["model"][f"module.trunk.0.{key}"]
        assert out.dtype == tensor.dtype and torch.equal(out, tensor), key


def test_votenet_sidecar_records_hashes_key_map_shapes_and_a_clean_verification(checkpoint: Path, tmp_path: Path):
    weights, sidecar = export_checkpoint(checkpoint, "votenet", tmp_path)
    meta = json.loads(sidecar.read_text())
    assert meta["output_sha256"] == sha256_file(weights)
    assert meta["source_sha256"] == sha256_file(checkpoint)
    assert meta["source_checkpoint"] == str(checkpoint)
    assert meta["target"] == "votenet" and meta["epoch"] == EPOCH and meta["tool_version"].startswith("depthcontrast")
    assert meta["missing_keys"] == [] and meta["unexpected_keys"] == []
    assert meta["key_map"]["query_encoders.point.sa1.mlp_module.layer0.conv.weight"] == (
        "module.trunk.0.sa1.mlp_module.layer0.conv.weight"
    )
    exported = torch.load(weights, weights_only=True)["model"]
    assert set(meta["key_map"].values()) == set(exported) == set(meta["shapes"])
    assert all(meta["shapes"][k] == list(v.shape) for k, v in exported.items())


def test_h3dnet_export_is_byte_identical_to_the_votenet_export_and_reproducible(checkpoint: Path, tmp_path: Path):
    votenet, _ = export_checkpoint(checkpoint, "votenet", tmp_path / "a")
    again, _ = export_checkpoint(checkpoint, "votenet", tmp_path / "b")
    h3dnet, sidecar = export_checkpoint(checkpoint, "h3dnet", tmp_path / "a")
    assert votenet.read_bytes() == again.read_bytes() == h3dnet.read_bytes()
    assert json.loads(sidecar.read_text())["target"] == "h3dnet"


def test_plain_export_holds_the_backbone_alone_as_pth_and_safetensors(checkpoint: Path, tmp_path: Path):
    weights, sidecar = export_checkpoint(checkpoint, "plain", tmp_path)
    plain = torch.load(weights, weights_only=True)
    safetensors_path = tmp_path / "plain.safetensors"
    from_safetensors = load_file(safetensors_path)
    reference = PointNet2SSG(scale=1)
    assert set(plain) == set(from_safetensors) == set(reference.state_dict())  # no head, no key encoder, no queue
    reference.load_state_dict(plain, strict=True)
    for key, tensor in query_encoder(checkpoint).items():
        if not key.startswith("head."):
            assert torch.equal(plain[key], tensor) and torch.equal(from_safetensors[key], tensor), key
    meta = json.loads(sidecar.read_text())
    assert meta["output_sha256"] == sha256_file(weights)
    assert meta["other_outputs"] == {"plain.safetensors": sha256_file(safetensors_path)}


def test_unknown_target_is_a_one_line_config_error_listing_the_known_ones(checkpoint: Path, tmp_path: Path):
    with pytest.raises(ConfigError, match="unknown export target 'votnet'") as caught:
        export_checkpoint(checkpoint, "votnet", tmp_path)
    message = str(caught.value)
    assert "\n" not in message and all(t in message for t in ("votenet", "plain", "minkunet_seg", "openpcdet"))


@pytest.mark.parametrize(
    ("target", "needs"), [("minkunet_seg", "MinkUNet voxel encoder"), ("openpcdet", "PointNet-MSG point encoder")]
)
def test_a_target_of_another_stack_names_the_encoder_it_needs(checkpoint: Path, tmp_path: Path, target, needs):
    with pytest.raises(ExportError) as caught:
        export_checkpoint(checkpoint, target, tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(checkpoint) in message and f"'{target}'" in message and needs in message
    assert "has only a PointNet++ point encoder" in message
    assert not list(tmp_path.iterdir())


def test_a_truncated_checkpoint_gives_the_checkpoint_modules_error(checkpoint: Path, tmp_path: Path):
    damaged = tmp_path / "last.pth"
    data = checkpoint.read_bytes()
    damaged.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        export_checkpoint(damaged, "votenet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- original import
def original_trunk(scale: int, head: list[int], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    encoder = PointNetEncoder(scale=scale, mlp_dims=head, npoints=TINY_NPOINTS)
    with torch.no_grad():
        randomise_buffers(encoder)
    return encoder.state_dict()


def write_original_checkpoint(path: Path, scale: int, head: list[int], joint: bool = False, **extra) -> dict:
    """A file in the original DepthContrast code's layout, saved in torch 1.5's legacy (non-zip) format."""
    model = {f"module.trunk.{i}.{k}": v for i in (0, 1) for k, v in original_trunk(scale, head, seed=i).items()}
    criterion = {"queue": F.normalize(torch.randn(head[-1], QUEUE), dim=0), "queue_ptr": torch.tensor([QUEUE // 2])}
    if joint:
        for trunk in (2, 3):
            model[f"module.trunk.{trunk}.conv0p1s1.kernel"] = torch.randn(27, 3, 32)
            model[f"module.trunk.{trunk}.bn0.bn.weight"] = torch.ones(32)
            model[f"module.trunk.{trunk}.head.clf.0.linear.weight"] = torch.randn(256, 256)
        criterion |= {"queue_other": torch.randn(head[-1], QUEUE), "queue_other_ptr": torch.tensor([0])}
    optimizer = {"state": {}, "param_groups": [{"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4, "params": [0, 1]}]}
    state = {"epoch": ORIGINAL_EPOCH, "model": model, "optimizer": optimizer, "train_criterion": criterion, **extra}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    return state


@pytest.mark.parametrize(("scale", "head"), [(1, [512, 512, 128]), (3, [768, 512, 128])])
def test_an_original_checkpoint_imports_and_exports_to_votenet_with_its_own_keys_and_values(
    tmp_path: Path, scale: int, head: list[int]
):
    original = write_original_checkpoint(tmp_path / "checkpoint-ep150.pth.tar", scale, head)
    out = import_original_checkpoint(tmp_path / "checkpoint-ep150.pth.tar", tmp_path / "imported.pth")
    state = load_checkpoint(out)
    config = state["config"]
    assert config["backbone"]["scale"] == scale and config["backbone"]["head_dims"] == head
    assert config["loss"]["num_negatives"] == QUEUE and config["loss"]["embedding_dim"] == head[-1]
    build_model(parse_run(config)).load_state_dict(state["model"], strict=True)
    assert torch.equal(state["model"]["queue_point"], original["train_criterion"]["queue"])
    assert int(state["model"]["queue_ptr_point"][0]) == QUEUE // 2
    assert state["epoch"] == ORIGINAL_EPOCH and state["optimizer"] is None
    assert state["imported_from"]["sha256"] == sha256_file(tmp_path / "checkpoint-ep150.pth.tar")
    assert state["imported_from"]["left_out"] == ["optimizer"]

    weights, _ = export_checkpoint(out, "votenet", tmp_path / "export")
    exported = torch.load(weights, weights_only=True)["model"]
    trunk0 = {k: v for k, v in original["model"].items() if k.startswith("module.trunk.0.")}
    assert set(exported) == set(trunk0)
    assert all(torch.equal(exported[k], v) for k, v in trunk0.items())
    backbone = {k: v for k, v in forks_key_transformation(exported).items() if ".head." not in k}
    assert {k: list(v.shape) for k, v in backbone.items()} == votenet_backbone_shapes(scale)


def test_a_joint_original_checkpoint_with_a_partial_voxel_trunk_is_refused_naming_the_key(tmp_path: Path):
    write_original_checkpoint(tmp_path / "joint.pth.tar", 1, [512, 512, 128], joint=True)
    with pytest.raises(OriginalImportError, match=r"module\.trunk\.2\.bn0\.bn\.bias is missing") as caught:
        import_original_checkpoint(tmp_path / "joint.pth.tar", tmp_path / "imported.pth")
    assert "\n" not in str(caught.value) and str(tmp_path / "joint.pth.tar") in str(caught.value)
    assert not (tmp_path / "imported.pth").exists()  # whole joint imports: tests/test_joint_import.py


def test_an_original_checkpoint_with_arbitrary_pickle_is_refused_unless_trusted(tmp_path: Path):
    path = tmp_path / "checkpoint-ep100.pth.tar"
    write_original_checkpoint(path, 1, [512, 512, 128], args=argparse.Namespace(lr=0.12))
    with pytest.raises(OriginalImportError, match="trust_pickle=True") as caught:
        import_original_checkpoint(path, tmp_path / "imported.pth")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "imported.pth").exists()
    import_original_checkpoint(path, tmp_path / "imported.pth", trust_pickle=True)
    assert load_checkpoint(tmp_path / "imported.pth")["epoch"] == ORIGINAL_EPOCH


def test_truncated_or_foreign_original_files_are_clear_errors(tmp_path: Path, checkpoint: Path):
    path = tmp_path / "checkpoint-ep150.pth.tar"
    write_original_checkpoint(path, 1, [512, 512, 128])
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(OriginalImportError, match="truncated or corrupt"):
        import_original_checkpoint(path, tmp_path / "imported.pth")
    with pytest.raises(OriginalImportError, match="already a depthcontrast-pipeline checkpoint"):
        import_original_checkpoint(checkpoint, tmp_path / "imported.pth")
    torch.save({"model": {"module.trunk.0.conv0p1s1.kernel": torch.zeros(1)}}, path)
    with pytest.raises(OriginalImportError, match=r"no module\.trunk\.1"):
        import_original_checkpoint(path, tmp_path / "imported.pth")
    assert not (tmp_path / "imported.pth").exists()


def not_checkpoints() -> dict[str, bytes]:
    """Files a user may pass by mistake: text, a failed download's HTML page, random bytes, an empty file, a zip."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("README.txt", "weights are elsewhere")
    return {
        "notes.txt": b"epoch 150, lr 0.12\n",
        "download.html": b"<!DOCTYPE html><html><body>404</body></html>",
        "random.bin": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty.pth": b"",
        "weights.zip": archive.getvalue(),
    }


@pytest.mark.parametrize("name", sorted(not_checkpoints()))
def test_a_file_that_is_no_checkpoint_is_named_so_and_never_sent_to_trust_pickle(tmp_path: Path, name: str):
    path = tmp_path / name
    path.write_bytes(not_checkpoints()[name])
    assert saved_file_kind(path) == NOT_PICKLED
    with pytest.raises(OriginalImportError) as caught:
        import_original_checkpoint(path, tmp_path / "imported.pth")
    message = str(caught.value)
    assert message.startswith(f"{path}: not a checkpoint: neither a torch.save file nor a pickle")
    assert "trust" not in message and "\n" not in message
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))}: not a checkpoint"):
        load_checkpoint(path)


def test_the_cli_names_a_text_file_as_no_checkpoint_in_one_line(tmp_path: Path):
    path = tmp_path / "checkpoint-ep150.pth.tar"
    path.write_text("<html>please log in</html>")
    result = run_cli("import-original", str(path), "--out", str(tmp_path / "imported.pth"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"depthcontrast: error: {path}: not a checkpoint: neither a torch.save file nor a pickle (it starts with "
        "b'<html>please log'); give a checkpoint-epNNN.pth.tar of the original DepthContrast code"
    ]


def test_import_seed_still_works_as_a_deprecated_name_of_import_original(tmp_path: Path):
    write_original_checkpoint(tmp_path / "checkpoint-ep150.pth.tar", 1, [512, 512, 128])
    result = run_cli("import-seed", str(tmp_path / "checkpoint-ep150.pth.tar"), "--out", str(tmp_path / "imported.pth"))
    assert result.returncode == 0, result.stderr
    assert "WARNING depthcontrast: `depthcontrast import-seed` is deprecated" in result.stderr
    assert "use `depthcontrast import-original`" in result.stderr
    assert load_checkpoint(tmp_path / "imported.pth")["epoch"] == ORIGINAL_EPOCH


def test_a_zip_checkpoint_with_arbitrary_pickle_is_sent_to_trust_pickle(tmp_path: Path):
    path = tmp_path / "checkpoint-ep100.pth.tar"
    original = write_original_checkpoint(path, 1, [512, 512, 128])
    torch.save({**original, "args": argparse.Namespace(lr=0.12)}, path)  # torch.save's zip archive this time
    with pytest.raises(OriginalImportError, match=r"trust_pickle=True \(--trust-pickle\)"):
        import_original_checkpoint(path, tmp_path / "imported.pth")


def test_saved_file_kind_tells_pickles_from_damaged_ones_without_unpickling(tmp_path: Path):
    legacy, archive, plain = tmp_path / "legacy.pth", tmp_path / "archive.pth", tmp_path / "plain.pkl"
    write_original_checkpoint(legacy, 1, [512, 512, 128], args=argparse.Namespace(lr=0.12))
    torch.save({"args": argparse.Namespace(lr=0.12)}, archive)
    plain.write_bytes(pickle.dumps({"lr": 0.12}, protocol=4))
    assert [saved_file_kind(path) for path in (legacy, archive, plain)] == [PICKLED] * 3
    for path in (legacy, archive, plain):
        cut = tmp_path / f"cut-{path.name}"
        data = path.read_bytes()
        cut.write_bytes(data[: min(40, len(data) // 2)])  # in the legacy file's pickles, the zip, the pickle
        assert saved_file_kind(cut) == DAMAGED, path.name


# ------------------------------------------------------------------- voxel / LiDAR layouts (synthetic)
def test_minkunet_layout_gives_spatiotemporalsegmentation_its_bare_minkunet_names():
    encoder = {
        "conv0p1s1.kernel": torch.randn(27, 3, 32),
        "block1.0.conv1.kernel": torch.randn(27, 32, 32),
        "block1.0.norm1.bn.running_mean": torch.randn(32),
        "bntr7.bn.weight": torch.randn(256),
        "head.clf.0.linear.weight": torch.randn(256, 256),
    }
    model, key_map = minkunet_seg_layout(encoder)
    assert key_map["conv0p1s1.kernel"] == "module.trunk.2.conv0p1s1.kernel"
    view = minkunet_seg_loader_view(model)
    assert set(view) == set(encoder) and all(view[k] is encoder[k] for k in encoder)


def test_openpcdet_layout_fills_backbone_3d_for_upstream_and_the_fork():
    encoder = {
        "SA_modules.0.mlps.0.0.weight": torch.randn(16, 4, 1, 1),
        "SA_modules.0.mlps.0.1.running_mean": torch.randn(16),
        "FP_modules.3.mlp.0.weight": torch.randn(128, 160, 1, 1),
        "head.clf.0.weight": torch.randn(128, 128),
    }
    layout, key_map = openpcdet_layout(encoder, trunk=0)
    assert set(layout["model_state"]) == {f"backbone_3d.{k}" for k in encoder if not k.startswith("head.")}
    assert "head.clf.0.weight" not in key_map
    detector_keys = [*layout["model_state"], "roi_head.cls_layers.0.weight", "point_head.cls_layers.0.weight"]
    view = openpcdet_fork_loader_view(layout, detector_keys)
    assert set(view) == set(layout["model_state"])
    assert all(view[f"backbone_3d.{k}"] is encoder[k] for k in encoder if not k.startswith("head."))


def test_an_export_that_does_not_fit_the_downstream_backbone_is_refused_before_writing(tmp_path: Path):
    model = DepthContrast({"point": lambda: PointNetEncoder(scale=1, npoints=TINY_NPOINTS)}, queue_size=QUEUE)
    config = run_config()
    config["backbone"]["scale"] = 2  # a config that does not match its weights
    path = tmp_path / "last.pth"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "epoch": 1, "step": 1, "config": config})
    for target in ("votenet", "plain"):
        with pytest.raises(ExportError, match=r"size mismatch for (backbone_net\.)?sa1\.mlp_module\.layer0"):
            export_checkpoint(path, target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- PointNet-MSG → OpenPCDet (real)
def msg_run_config(**backbone) -> dict:
    run = {"datasets": ["d"], "backbone": {"name": "pointnet2_msg", "npoints": list(TINY_NPOINTS), **backbone}}
    run["loss"] = {"num_negatives": QUEUE}
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}}, "pretrain": {"r": run}}
    return validate_config(config)["pretrain"]["r"]


@pytest.fixture(scope="module")
def msg_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PointNet-MSG run's checkpoint as train.py writes it (PointRCNN widths, intensity input)."""
    torch.manual_seed(1)
    run = msg_run_config()
    model = build_model(parse_run(run))
    with torch.no_grad():
        randomise_buffers(model)
        for param in model.key_encoders.parameters():
            param.add_(1.0)
    path = tmp_path_factory.mktemp("msg_ckpt") / "last.pth"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "epoch": EPOCH, "step": 5, "config": run})
    return path


class PointRCNNLike(nn.Module):
    """A detector with PointNet2MSG as `backbone_3d` (keys and shapes from OpenPCDet's pointrcnn.yaml) and a
    point head, whose keys a pretrained backbone file does not have."""

    def __init__(self, input_channels: int = 4):
        super().__init__()
        self.backbone_3d = nn.Module()
        for key, shape in pointrcnn_backbone_shapes(input_channels).items():
            *path, name = key.split(".")
            parent = self.backbone_3d
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.register_buffer(name, torch.zeros(shape, dtype=torch.long if not shape else torch.float32))
        self.point_head = nn.Linear(128, 3)


def openpcdet_load_params_from_file(model: nn.Module, path: Path) -> tuple[set[str], set[str]]:
    """OpenPCDet's `load_params_from_file` rule (detector3d_template.py): torch.load the file, take
    checkpoint['model_state'], copy every tensor whose key the model has with the same shape; the rest is
    skipped. Returns (updated keys, model keys not updated)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # torch >= 2.6's default
    state = model.state_dict()
    update = {k: v for k, v in checkpoint["model_state"].items() if k in state and state[k].shape == v.shape}
    state.update(update)
    model.load_state_dict(state)
    return set(update), set(state) - set(update)


def test_openpcdet_export_fills_pointrcnns_backbone_3d_exactly_by_openpcdets_loader(msg_checkpoint, tmp_path):
    weights, _ = export_checkpoint(msg_checkpoint, "openpcdet", tmp_path)
    detector = PointRCNNLike()
    updated, not_updated = openpcdet_load_params_from_file(detector, weights)
    backbone_keys = {f"backbone_3d.{k}" for k in pointrcnn_backbone_shapes(4)}
    assert updated == backbone_keys  # every backbone tensor, none skipped for its shape
    assert not_updated == {"point_head.weight", "point_head.bias"}
    file = torch.load(weights, weights_only=True)
    assert set(file["model_state"]) == backbone_keys and file["epoch"] == EPOCH
    assert file["version"].startswith("depthcontrast-pipeline")
    loaded = detector.state_dict()
    for key, tensor in query_encoder(msg_checkpoint).items():
        if not key.startswith("head."):
            out = loaded[f"backbone_3d.{key}"]
            assert out.dtype == tensor.dtype and torch.equal(out, tensor), key  # query encoder, BN stats included


def test_openpcdet_export_also_serves_the_depthcontrast_forks_loader(msg_checkpoint, tmp_path):
    weights, _ = export_checkpoint(msg_checkpoint, "openpcdet", tmp_path)
    file = torch.load(weights, weights_only=True)
    detector_keys = [*(f"backbone_3d.{k}" for k in pointrcnn_backbone_shapes(4)), "point_head.weight"]
    view = openpcdet_fork_loader_view(file, detector_keys)
    assert set(view) == set(file["model_state"])
    assert all(torch.equal(view[k], file["model_state"][k]) for k in view)


def test_openpcdet_sidecar_records_hashes_key_map_shapes_and_the_detector_settings(msg_checkpoint, tmp_path):
    weights, sidecar = export_checkpoint(msg_checkpoint, "openpcdet", tmp_path)
    meta = json.loads(sidecar.read_text())
    assert meta["output_sha256"] == sha256_file(weights) and meta["source_sha256"] == sha256_file(msg_checkpoint)
    assert meta["missing_keys"] == [] and meta["unexpected_keys"] == []
    assert meta["key_map"]["query_encoders.point.FP_modules.0.mlp.0.weight"] == "backbone_3d.FP_modules.0.mlp.0.weight"
    assert meta["shapes"]["backbone_3d.FP_modules.0.mlp.0.weight"] == [128, 257, 1, 1]
    assert len(meta["shapes"]) == len(pointrcnn_backbone_shapes(4))
    downstream = meta["downstream_config"]
    assert downstream["input_channels"] == 4 and downstream["used_feature_list"] == ["x", "y", "z", "intensity"]
    assert downstream["BACKBONE_3D"]["FP_MLPS"] == [[128, 128], [256, 256], [512, 512], [512, 512]]
    assert downstream["BACKBONE_3D"]["SA_CONFIG"]["MLPS"][3] == [[256, 256, 512], [256, 384, 512]]
    assert all(key.startswith("classy_state_dict trunk 0.head.") for key in meta["ignored_by_loader"])


def test_plain_export_of_an_msg_run_is_its_backbone(msg_checkpoint, tmp_path):
    weights, _ = export_checkpoint(msg_checkpoint, "plain", tmp_path)
    plain = torch.load(weights, weights_only=True)
    assert {k: tuple(v.shape) for k, v in plain.items()} == pointrcnn_backbone_shapes(4)


@pytest.mark.parametrize("target", ["votenet", "h3dnet", "minkunet_seg"])
def test_an_msg_run_asked_for_another_stacks_target_is_a_one_line_error(msg_checkpoint, tmp_path, target):
    with pytest.raises(ExportError) as caught:
        export_checkpoint(msg_checkpoint, target, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and f"'{target}'" in message
    assert "has only a PointNet-MSG point encoder" in message
    if target == "minkunet_seg":
        assert "MinkUNet voxel encoder (voxel_backbone.name: minkunet)" in message
    else:
        assert "PointNet++ point encoder (backbone.name: pointnet2_ssg)" in message
    assert not list(tmp_path.iterdir())


def test_an_ssg_run_asked_for_openpcdet_names_both_backbones_it_could_use(checkpoint, tmp_path):
    with pytest.raises(ExportError) as caught:
        export_checkpoint(checkpoint, "openpcdet", tmp_path)
    message = str(caught.value)
    assert "PointNet-MSG point encoder (backbone.name: pointnet2_msg)" in message
    assert "sparse UNet (spconv) voxel encoder (voxel_backbone.name: spconv_unet)" in message


def test_msg_weights_that_openpcdets_loader_would_skip_are_refused_before_writing(msg_checkpoint, tmp_path):
    state = load_checkpoint(msg_checkpoint)
    state["config"] = msg_run_config(features=[])  # the config says xyz only; the weights read intensity
    path = tmp_path / "mismatch.pth"
    save_checkpoint(path, state)
    with pytest.raises(ExportError, match=r"OpenPCDet's loader would skip 3 keys \(backbone_3d\.FP_modules\.0"):
        export_checkpoint(path, "openpcdet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------- sparse UNet (UNetV2) → OpenPCDet (real)
def unetv2_backbone_shapes(input_channels: int) -> dict[str, tuple[int, ...]]:
    """OpenPCDet UNetV2's backbone_3d parameter shapes (spconv_unet.py, RETURN_ENCODED_TENSOR False), spconv 2.x
    layout [out, 3, 3, 3, in], written out from its layer list: (module prefix, in, out) per conv + BN."""
    convs = [("conv_input.0", "conv_input.1", input_channels, 16), ("conv1.0.0", "conv1.0.1", 16, 16)]
    for level, (cin, cout) in ((2, (16, 32)), (3, (32, 64)), (4, (64, 64))):
        convs += [(f"conv{level}.{i}.0", f"conv{level}.{i}.1", cin if i == 0 else cout, cout) for i in range(3)]
    for level, width, out in ((4, 64, 64), (3, 64, 32), (2, 32, 16), (1, 16, 16)):
        convs += [(f"conv_up_t{level}.conv{i}", f"conv_up_t{level}.bn{i}", width, width) for i in (1, 2)]
        convs.append((f"conv_up_m{level}.0", f"conv_up_m{level}.1", 2 * width, width))
        if level > 1:
            convs.append((f"inv_conv{level}.0", f"inv_conv{level}.1", width, out))
    convs.append(("conv5.0.0", "conv5.0.1", 16, 16))
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, bn, cin, cout in convs:
        shapes[f"{conv}.weight"] = (cout, 3, 3, 3, cin)
        shapes.update({f"{bn}.{name}": (cout,) for name in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{bn}.num_batches_tracked"] = ()
    return shapes


class PartA2Like(nn.Module):
    """A detector with UNetV2's backbone_3d keys and shapes plus a point head the pretrained file lacks."""

    def __init__(self, input_channels: int = 4):
        super().__init__()
        self.backbone_3d = nn.Module()
        for key, shape in unetv2_backbone_shapes(input_channels).items():
            *path, name = key.split(".")
            parent = self.backbone_3d
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.register_buffer(name, torch.zeros(shape, dtype=torch.long if not shape else torch.float32))
        self.point_head = nn.Linear(16, 3)


def unet_run_config(**voxel) -> dict:
    block = {"voxel_size": [0.1, 0.1, 0.2], "point_range": [0, 0, 0, 3.2, 3.2, 1.8], **voxel}
    run = {"datasets": ["d"], "representations": ["voxel"], "voxel_backbone": block, "loss": {"num_negatives": QUEUE}}
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "lidar"}}}, "pretrain": {"r": run}}
    return validate_config(config)["pretrain"]["r"]


@pytest.fixture(scope="module")
def unet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A voxel-only sparse-UNet run's checkpoint as train.py writes it (x, y, z, intensity voxel features)."""
    pytest.importorskip("spconv.pytorch", reason="the voxel extra (spconv) is not installed")
    return voxel_checkpoint(tmp_path_factory.mktemp("unet_ckpt"), unet_run_config(), seed=2, shift_key_encoders=True)


def voxel_checkpoint(folder: Path, run: dict, seed: int, shift_key_encoders: bool = False) -> Path:
    """<folder>/last.pth of `run`'s freshly built model with non-default BN statistics (and key encoders moved
    off the query encoders' values when asked), in train.py's checkpoint layout."""
    torch.manual_seed(seed)
    model = build_model(parse_run(run))
    with torch.no_grad():
        randomise_buffers(model)
        if shift_key_encoders:
            for param in model.key_encoders.parameters():
                param.add_(1.0)
    path = folder / "last.pth"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": {}, "epoch": EPOCH, "step": 5, "config": run})
    return path


def voxel_query_encoder(path: Path) -> dict[str, torch.Tensor]:
    prefix = "query_encoders.voxel."
    return {k[len(prefix) :]: v for k, v in load_checkpoint(path)["model"].items() if k.startswith(prefix)}


def test_unet_openpcdet_export_fills_part_a2s_backbone_3d_exactly_by_openpcdets_loader(unet_checkpoint, tmp_path):
    weights, _ = export_checkpoint(unet_checkpoint, "openpcdet", tmp_path)
    detector = PartA2Like()
    updated, not_updated = openpcdet_load_params_from_file(detector, weights)
    assert updated == {f"backbone_3d.{k}" for k in unetv2_backbone_shapes(4)}  # every tensor, none skipped
    assert not_updated == {"point_head.weight", "point_head.bias"}
    file = torch.load(weights, weights_only=True)
    assert file["epoch"] == EPOCH and file["version"].startswith("depthcontrast-pipeline")
    loaded = detector.state_dict()
    for key, tensor in voxel_query_encoder(unet_checkpoint).items():
        if not key.startswith("head."):
            assert torch.equal(loaded[f"backbone_3d.{key}"], tensor), key  # the query encoder, BN stats included


def test_unet_openpcdet_export_gives_the_fork_spconv_1_weights_as_trunk_2(unet_checkpoint, tmp_path):
    weights, _ = export_checkpoint(unet_checkpoint, "openpcdet", tmp_path)
    file = torch.load(weights, weights_only=True)
    trunk = file["classy_state_dict"]["base_model"]["model"]["trunk"]
    source = voxel_query_encoder(unet_checkpoint)
    assert set(trunk) == {f"2.{k}" for k in source}  # the whole query encoder, head included, as the original saved it
    assert trunk["2.conv_input.0.weight"].shape == (3, 3, 3, 4, 16)  # spconv 1.x: [k, k, k, in, out]
    assert torch.equal(trunk["2.conv_up_m4.0.weight"], source["conv_up_m4.0.weight"].permute(1, 2, 3, 4, 0))
    assert torch.equal(trunk["2.conv_up_m4.1.running_mean"], source["conv_up_m4.1.running_mean"])
    detector_keys = [*(f"backbone_3d.{k}" for k in unetv2_backbone_shapes(4)), "point_head.weight"]
    view = openpcdet_fork_loader_view(file, detector_keys)
    assert set(view) == set(file["model_state"])


def test_unet_openpcdet_sidecar_records_the_part_a2_settings(unet_checkpoint, tmp_path):
    weights, sidecar = export_checkpoint(unet_checkpoint, "openpcdet", tmp_path)
    meta = json.loads(sidecar.read_text())
    assert meta["output_sha256"] == sha256_file(weights) and meta["missing_keys"] == [] == meta["unexpected_keys"]
    assert meta["key_map"]["query_encoders.voxel.conv_input.0.weight"] == "backbone_3d.conv_input.0.weight"
    assert meta["shapes"]["backbone_3d.inv_conv3.0.weight"] == [32, 3, 3, 3, 64]
    assert len(meta["shapes"]) == len(unetv2_backbone_shapes(4))
    downstream = meta["downstream_config"]
    assert downstream["VFE"] == {"NAME": "MeanVFE"} and downstream["input_channels"] == 4
    assert downstream["BACKBONE_3D"] == {"NAME": "UNetV2", "RETURN_ENCODED_TENSOR": False}
    assert downstream["VOXEL_SIZE"] == [0.1, 0.1, 0.2] and downstream["MAX_POINTS_PER_VOXEL"] == 5
    ignored = meta["ignored_by_loader"]
    assert ignored and all(k.startswith("classy_state_dict trunk 2.head.") for k in ignored)


def test_unet_weights_that_openpcdets_loader_would_skip_are_refused_before_writing(unet_checkpoint, tmp_path):
    state = load_checkpoint(unet_checkpoint)
    state["config"] = unet_run_config(features=[])  # the config says x, y, z only; the weights read intensity
    path = tmp_path / "mismatch.pth"
    save_checkpoint(path, state)
    with pytest.raises(ExportError, match=r"OpenPCDet's loader would skip 1 keys \(backbone_3d\.conv_input\.0\.weight"):
        export_checkpoint(path, "openpcdet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("target", "needs"), [("minkunet_seg", "MinkUNet voxel encoder"), ("votenet", "PointNet++")])
def test_a_unet_run_asked_for_another_stacks_target_is_a_one_line_error(unet_checkpoint, tmp_path, target, needs):
    with pytest.raises(ExportError) as caught:
        export_checkpoint(unet_checkpoint, target, tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "has only a sparse UNet (spconv) voxel encoder" in message and needs in message
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------- MinkUNet34 → SpatioTemporalSegmentation (real)
def res16unet34_shapes(in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of STS's Res16UNet34 (D=3, conv1_kernel_size 3, no `final`) from its construction rules:
    convs `kernel` [k³, in, out] ([in, out] for the 1³ downsample convs), norms `bn.*` (MinkowskiBatchNorm)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int) -> None:
        shapes[f"{name}.kernel"] = (cin, cout) if k == 1 else (k**3, cin, cout)

    def norm(name: str, c: int) -> None:
        shapes.update({f"{name}.bn.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.bn.num_batches_tracked"] = ()

    def stage(name: str, inplanes: int, planes: int, blocks: int) -> None:
        for i in range(blocks):
            cin = inplanes if i == 0 else planes
            conv(f"{name}.{i}.conv1", cin, planes, 3)
            norm(f"{name}.{i}.norm1", planes)
            conv(f"{name}.{i}.conv2", planes, planes, 3)
            norm(f"{name}.{i}.norm2", planes)
            if cin != planes:
                conv(f"{name}.{i}.downsample.0", cin, planes, 1)
                norm(f"{name}.{i}.downsample.1", planes)

    conv("conv0p1s1", in_channels, 32, 3)
    norm("bn0", 32)
    for n, (down, cin, planes, blocks) in enumerate(
        [("conv1p1s2", 32, 32, 2), ("conv2p2s2", 32, 64, 3), ("conv3p4s2", 64, 128, 4), ("conv4p8s2", 128, 256, 6)],
        start=1,
    ):
        conv(down, cin, cin, 2)
        norm(f"bn{n}", cin)
        stage(f"block{n}", cin, planes, blocks)
    for n, (up, cin, skip) in enumerate(
        [("convtr4p16s2", 256, 128), ("convtr5p8s2", 256, 64), ("convtr6p4s2", 256, 32), ("convtr7p2s2", 256, 32)],
        start=4,
    ):
        conv(up, cin, 256, 2)
        norm(f"bntr{n}", 256)
        stage(f"block{n + 1}", 256 + skip, 256, 2)
    return shapes


def minkunet_run_config(**voxel) -> dict:
    block = {"name": "minkunet", "voxel_size": [0.4, 0.4, 0.4], "point_range": [-3.2, -3.2, -3.2, 3.2, 3.2, 3.2]}
    run = {"datasets": ["d"], "representations": ["voxel"], "voxel_backbone": {**block, **voxel}}
    run["loss"] = {"num_negatives": QUEUE}
    config = {"datasets": {"d": {"source": {"kind": "builtin", "subset": "indoor"}}}, "pretrain": {"r": run}}
    return validate_config(config)["pretrain"]["r"]


@pytest.fixture(scope="module")
def minkunet_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A voxel-only MinkUNet34 run's checkpoint as train.py writes it (RGB voxel features)."""
    pytest.importorskip("spconv.pytorch", reason="the voxel extra (spconv) is not installed")
    return voxel_checkpoint(tmp_path_factory.mktemp("minkunet_ckpt"), minkunet_run_config(), seed=3)


def test_minkunet_seg_export_has_res16unet34s_bare_names_and_shapes(minkunet_checkpoint, tmp_path):
    weights, _ = export_checkpoint(minkunet_checkpoint, "minkunet_seg", tmp_path)
    file = torch.load(weights, weights_only=True)
    bare = file["state_dict"]
    assert {k: tuple(v.shape) for k, v in bare.items()} == res16unet34_shapes(3)  # no head, no trunk prefix
    assert set(file["model"]) == {f"module.trunk.2.{k}" for k in bare}  # the DepthContrast STS fork's layout
    assert minkunet_seg_loader_view(file["model"]).keys() == bare.keys()
    assert file["epoch"] == EPOCH and file["version"].startswith("depthcontrast-pipeline")


def test_minkunet_seg_export_round_trips_every_value_exactly(minkunet_checkpoint, tmp_path):
    from depthcontrast.export.minkowski import from_minkowski, region_of

    weights, _ = export_checkpoint(minkunet_checkpoint, "minkunet_seg", tmp_path)
    bare = torch.load(weights, weights_only=True)["state_dict"]
    source = voxel_query_encoder(minkunet_checkpoint)
    assert sum(1 for k in source if not k.startswith("head.")) == len(bare)
    for key, tensor in source.items():
        if key.startswith("head."):
            continue
        if tensor.ndim == 5:  # a conv: back through the inverse permutation
            kernel = bare[key[: -len("weight")] + "kernel"]
            assert torch.equal(from_minkowski(kernel, region_of(key), tensor.shape[1]), tensor), key
        else:
            assert torch.equal(bare[key], tensor), key  # BN weights and statistics as they are


def test_minkunet_seg_sidecar_hashes_the_file_and_records_the_sts_settings(minkunet_checkpoint, tmp_path):
    weights, sidecar = export_checkpoint(minkunet_checkpoint, "minkunet_seg", tmp_path)
    meta = json.loads(sidecar.read_text())
    assert meta["output_sha256"] == sha256_file(weights) and meta["source_sha256"] == sha256_file(minkunet_checkpoint)
    assert meta["missing_keys"] == [] == meta["unexpected_keys"]
    assert meta["key_map"]["query_encoders.voxel.block1.0.conv1.weight"] == "block1.0.conv1.kernel"
    assert meta["key_map"]["query_encoders.voxel.bntr7.bn.running_var"] == "bntr7.bn.running_var"
    assert meta["shapes"]["conv0p1s1.kernel"] == [27, 3, 32] and meta["shapes"]["convtr4p16s2.kernel"] == [8, 256, 256]
    assert meta["shapes"]["block2.0.downsample.0.kernel"] == [32, 64]
    downstream = meta["downstream_config"]
    assert downstream["model"] == "Res16UNet34" and downstream["in_channels"] == 3
    assert downstream["voxel_size"] == [0.4, 0.4, 0.4] and downstream["input_features"] == ["rgb"]


def test_a_minkunet_run_without_features_exports_a_one_channel_input(tmp_path):
    pytest.importorskip("spconv.pytorch", reason="the voxel extra (spconv) is not installed")
    run = minkunet_run_config(features=[])
    path = tmp_path / "ckpt.pth"
    save_checkpoint(
        path, {"model": build_model(parse_run(run)).state_dict(), "optimizer": {}, "epoch": 1, "step": 1, "config": run}
    )
    weights, sidecar = export_checkpoint(path, "minkunet_seg", tmp_path / "out")
    assert torch.load(weights, weights_only=True)["state_dict"]["conv0p1s1.kernel"].shape == (27, 1, 32)
    assert json.loads(sidecar.read_text())["downstream_config"]["input_features"] == ["constant 1"]


# MinkowskiEngine's kernel-offset orders, written out from its sources (see depthcontrast/export/minkowski.py):
# HYPERCUBE, src/kernel_region.hpp: from the lower bound, x fastest; even kernels start at 0.
ME_HYPERCUBE_2 = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 0, 1), (1, 0, 1), (0, 1, 1), (1, 1, 1)]
ME_HYPERCUBE_3 = [(x, y, z) for z in (-1, 0, 1) for y in (-1, 0, 1) for x in (-1, 0, 1)]
# HYBRID (all axes HYPERCUBE), MinkowskiKernelGenerator.py convert_region_type: the centre, then x moved, then
# y moved on each of those 3, then z moved on each of those 9
ME_HYBRID_XY = [(0, 0, 0), (-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (-1, -1, 0), (-1, 1, 0), (1, -1, 0), (1, 1, 0)]
ME_HYBRID_3 = ME_HYBRID_XY + [(x, y, z) for x, y, _ in ME_HYBRID_XY for z in (-1, 1)]


@pytest.mark.parametrize(
    ("region", "k", "expected"),
    [("hypercube", 2, ME_HYPERCUBE_2), ("hypercube", 3, ME_HYPERCUBE_3), ("hybrid", 3, ME_HYBRID_3)],
)
def test_the_kernel_conversion_puts_each_offset_where_minkowskiengine_expects_it(region, k, expected):
    """A spconv kernel whose weight at each position is that position's (dx, dy, dz) — spconv's index (a, b, c)
    runs over (z, y, x), offset = index − k//2 for odd k, = index for even k — comes out of the conversion as
    MinkowskiEngine's offset list, in MinkowskiEngine's order."""
    from depthcontrast.export.minkowski import from_minkowski, to_minkowski

    shift = k // 2 if k % 2 else 0
    weight = torch.zeros(3, k, k, k, 1)  # [out = (dx, dy, dz), kz, ky, kx, in = 1]
    for a in range(k):
        for b in range(k):
            for c in range(k):
                weight[:, a, b, c, 0] = torch.tensor([c - shift, b - shift, a - shift], dtype=torch.float32)
    kernel = to_minkowski(weight, region)
    assert kernel.shape == (k**3, 1, 3)
    assert [tuple(int(v) for v in row) for row in kernel[:, 0, :]] == expected
    assert len(set(expected)) == k**3
    assert torch.equal(from_minkowski(kernel, region, k), weight)


def _minkowski_conv(coords_in, features, kernel, offsets, coords_out, transposed=False):
    """MinkowskiEngine's rule evaluated directly on (batch, x, y, z) coordinates: out[u] = Σ_i kernel[i]ᵀ in[u + o_i]
    (a transposed conv scatters the other way: out[u] = Σ_i kernel[i]ᵀ in[u − o_i], the strided conv's pairs)."""
    where = {tuple(c): i for i, c in enumerate(coords_in.tolist())}
    out = torch.zeros(len(coords_out), kernel.shape[2], dtype=torch.float64)
    sign = -1 if transposed else 1
    for row, (b, x, y, z) in enumerate(coords_out.tolist()):
        for plane, (dx, dy, dz) in zip(kernel, offsets, strict=True):
            j = where.get((b, x + sign * dx, y + sign * dy, z + sign * dz))
            if j is not None:
                out[row] += features[j] @ plane
    return out


def test_converted_kernels_compute_in_minkowskiengines_rule_what_spconv_computes():
    """The conversion, spconv's conventions and the offset orders together: each of MinkUNet's conv kinds (3³
    SubM in both orders, 2³ stride 2, its inverse) gives spconv's output when MinkowskiEngine's rule is evaluated
    with the converted kernel."""
    spconv = pytest.importorskip("spconv.pytorch", reason="the voxel extra (spconv) is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # spconv 2.3.8's CPU scatter loses a few sums now and then with several threads
    try:
        _check_converted_kernels_against_spconv(spconv)
    finally:
        torch.set_num_threads(threads)


def _check_converted_kernels_against_spconv(spconv) -> None:
    from depthcontrast.export.minkowski import offsets_for, to_minkowski

    torch.manual_seed(0)
    xyz = torch.unique(torch.randint(0, 8, (80, 3)), dim=0)
    me = torch.cat([torch.zeros(len(xyz), 1, dtype=torch.long), xyz], dim=1)  # (batch, x, y, z)
    indices = me[:, [0, 3, 2, 1]].int()  # spconv: (batch, z, y, x)
    features = torch.randn(len(me), 2, dtype=torch.float64)
    x = spconv.SparseConvTensor(features, indices, [8, 8, 8], 1)
    for region in ("hypercube", "hybrid"):
        subm = spconv.SubMConv3d(2, 3, 3, bias=False, indice_key="subm").double()
        out = subm(x)
        kernel = to_minkowski(subm.weight.data, region)
        assert torch.equal(out.indices, indices)
        assert torch.allclose(out.features, _minkowski_conv(me, features, kernel, offsets_for(region, 3), me))
    down = spconv.SparseConv3d(2, 3, 2, stride=2, bias=False, indice_key="down").double()
    coarse = down(x)
    coarse_me = torch.cat([coarse.indices[:, :1], 2 * coarse.indices[:, [3, 2, 1]]], dim=1).long()  # tensor stride 2
    kernel = to_minkowski(down.weight.data, "hypercube")
    expected = _minkowski_conv(me, features, kernel, offsets_for("hypercube", 2), coarse_me)
    assert torch.allclose(coarse.features, expected)
    up = spconv.SparseInverseConv3d(3, 2, 2, bias=False, indice_key="down").double()
    coarse_features = torch.randn(len(coarse_me), 3, dtype=torch.float64)
    fine = up(coarse.replace_feature(coarse_features))
    assert torch.equal(fine.indices, indices)
    kernel = to_minkowski(up.weight.data, "hypercube")
    expected = _minkowski_conv(coarse_me, coarse_features, kernel, offsets_for("hypercube", 2), me, transposed=True)
    assert torch.allclose(fine.features, expected)
