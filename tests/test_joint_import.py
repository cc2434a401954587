"""The import of the original DepthContrast code's joint models (`pointnet_unet_joint`): their MinkowskiEngine-0.4
Res16UNet34 voxel trunks (`module.trunk.2/3.*`, SMLP heads) and voxel queue (`queue_other`) become our MinkUNet34
voxel encoders on spconv or on MinkowskiEngine, on checkpoints written in that exact layout from a real model."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthcontrast.checkpoint import load_checkpoint
from depthcontrast.data.voxelize import collate_voxels, voxelize
from depthcontrast.export import OriginalImportError, import_original_checkpoint
from depthcontrast.export.minkowski import LAYOUT_04, LAYOUT_05, minkowski_state, relayout
from depthcontrast.specs import parse_run
from depthcontrast.train import build_model
from tests.conftest import run_cli
from tests.test_export import ORIGINAL_EPOCH, QUEUE, original_trunk, randomise_buffers

pytest.importorskip("spconv.pytorch", reason="the voxel extra (spconv) is not installed")

HEAD = [256, 256, 128]  # the original's mlp_dim of the voxel trunk
POINT_HEAD = [512, 512, 128]
VOXEL_PREFIX = {2: "query_encoders.voxel.", 3: "key_encoders.voxel."}
PARITY_TOLERANCE = 1e-4  # embeddings of the same weights on spconv and on MinkowskiEngine (float32, CPU)


def spconv_encoder(seed: int) -> dict[str, torch.Tensor]:
    """A spconv MinkUNet34 encoder's state_dict with random weights and non-default BN statistics."""
    from depthcontrast.models.minkunet import MinkUNet34Encoder

    torch.manual_seed(seed)
    encoder = MinkUNet34Encoder(3, [64, 64, 64], HEAD)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if ".bn." in name:  # BN affine parameters off their 1 / 0 defaults
                param.copy_(torch.rand_like(param) + 0.5 if name.endswith("weight") else torch.randn_like(param))
        randomise_buffers(encoder)
    return encoder.state_dict()


def as_original(encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our spconv encoder's weights in the original's layout: MinkowskiEngine-0.4 kernels (block convs in HYBRID
    order) and an SMLP head of MinkowskiLinear layers (`clf.<i>.linear.*`, ours `clf.<2i>.*`)."""
    trunk, _ = minkowski_state(encoder, LAYOUT_04)
    for key, tensor in encoder.items():
        if key.startswith("head.clf."):
            index, name = key[len("head.clf.") :].split(".")
            trunk[f"head.clf.{int(index) // 2}.linear.{name}"] = tensor
    return trunk


def joint_original() -> dict:
    """An original `pointnet_unet_joint` checkpoint's dict (PointNet++ trunks 0/1, MinkUNet trunks 2/3 and both
    queues) and the spconv encoders its voxel trunks were written from."""
    encoders = {index: spconv_encoder(seed=10 + index) for index in VOXEL_PREFIX}
    model = {f"module.trunk.{i}.{k}": v for i in (0, 1) for k, v in original_trunk(1, POINT_HEAD, seed=i).items()}
    for index, encoder in encoders.items():
        model |= {f"module.trunk.{index}.{k}": v for k, v in as_original(encoder).items()}
    criterion = {
        "queue": F.normalize(torch.randn(HEAD[-1], QUEUE), dim=0),
        "queue_ptr": torch.tensor([QUEUE // 2]),
        "queue_other": F.normalize(torch.randn(HEAD[-1], QUEUE), dim=0),
        "queue_other_ptr": torch.tensor([QUEUE // 4]),
    }
    state = {"epoch": ORIGINAL_EPOCH, "model": model, "optimizer": {"state": {}}, "train_criterion": criterion}
    return {"state": state, "encoders": encoders}


def save_original(path: Path, state: dict) -> None:
    torch.save(state, path, _use_new_zipfile_serialization=False)  # torch 1.5's legacy format, as released


def shapes_only(state: dict, drop: str | None = None, **replace: torch.Tensor) -> dict:
    """`state` with its voxel trunks as stride-0 views (the right shapes, a few bytes on disk: for checks that
    never read the values); `drop` removes a key, `replace` sets one (model or train_criterion keys)."""
    voxel = re.compile(r"^module\.trunk\.[23]\.")
    model = {k: torch.zeros(()).expand(v.shape) if voxel.match(k) else v for k, v in state["model"].items()}
    criterion = dict(state["train_criterion"])
    for key, tensor in replace.items():
        (criterion if key in criterion else model)[key] = tensor
    if drop is not None:
        (criterion if drop in criterion else model).pop(drop)
    return {**state, "model": model, "train_criterion": criterion}


@pytest.fixture(scope="module")
def joint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The original joint checkpoint on disk and what it was written from."""
    original = joint_original()
    path = tmp_path_factory.mktemp("joint") / "checkpoint-ep400.pth.tar"
    save_original(path, original["state"])
    return path, original


@pytest.fixture(scope="module")
def imported(joint, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Its import on the default (spconv) stack, loaded back."""
    out = tmp_path_factory.mktemp("imported") / "imported.pth"
    return load_checkpoint(import_original_checkpoint(joint[0], out))


def voxel_part(model: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
    prefix = VOXEL_PREFIX[index]
    return {k[len(prefix) :]: v for k, v in model.items() if k.startswith(prefix)}


def test_a_joint_checkpoint_imports_exactly_onto_the_spconv_minkunet(joint, imported):
    _, original = joint
    state = imported
    config = state["config"]
    assert config["representations"] == ["point", "voxel"]
    voxel = config["voxel_backbone"]
    assert (voxel["name"], voxel["stack"], voxel["head_dims"], voxel["features"]) == (
        "minkunet",
        "spconv",
        HEAD,
        ["rgb"],
    )
    assert voxel["voxel_size"] == [0.05, 0.05, 0.05]  # the original's
    loss = config["loss"]
    assert (loss["loss_types"], loss["within_format_weights"], loss["across_format_weights"]) == (
        ["NPID", "CMC"],
        [0.5, 0.5],
        [0.5, 0.5],
    )
    model = build_model(parse_run(config))
    model.load_state_dict(state["model"], strict=True)
    assert model.term_weights == {"npid": 0.5, "npid_other": 0.5, "cmc_p2i": 0.5, "cmc_i2p": 0.5}
    for index, encoder in original["encoders"].items():  # spconv → MinkowskiEngine 0.4 → spconv is exact
        imported = voxel_part(state["model"], index)
        assert imported.keys() == encoder.keys()
        for key, tensor in encoder.items():
            assert torch.equal(imported[key], tensor), (index, key)
    criterion = original["state"]["train_criterion"]
    assert torch.equal(state["model"]["queue_voxel"], criterion["queue_other"])
    assert int(state["model"]["queue_ptr_voxel"][0]) == QUEUE // 4
    assert torch.equal(state["model"]["queue_point"], criterion["queue"])
    assert state["epoch"] == ORIGINAL_EPOCH and state["optimizer"] is None
    assert state["imported_from"]["left_out"] == ["optimizer"]
    assert "ReLU" in state["imported_from"]["note"] and "not the same function" in state["imported_from"]["note"]


def test_block_kernels_are_read_in_minkowskiengine_04s_hybrid_plane_order(joint, imported):
    """MinkowskiEngine 0.4's HYBRID region lists the centre first, then x −1, x +1, then y −1, y +1 (a block
    conv's planes 0-4); the stem conv is a hypercube, x fastest from (−1, −1, −1). spconv's weight is
    [out, z, y, x, in] with index = offset + 1, except a 1³ conv's, whose memory spconv reads as [in, out]."""
    _, original = joint
    ours = voxel_part(imported["model"], 2)
    trunk = {k[len("module.trunk.2.") :]: v for k, v in original["state"]["model"].items() if ".trunk.2." in k}
    block, conv = trunk["block3.1.conv2.kernel"], ours["block3.1.conv2.weight"]
    for plane, (x, y, z) in enumerate([(0, 0, 0), (-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0)]):
        assert torch.equal(conv[:, z + 1, y + 1, x + 1, :], block[plane].t()), plane
    stem, conv = trunk["conv0p1s1.kernel"], ours["conv0p1s1.weight"]
    for plane, (x, y, z) in [(0, (-1, -1, -1)), (1, (0, -1, -1)), (3, (-1, 0, -1)), (26, (1, 1, 1))]:
        assert torch.equal(conv[:, z + 1, y + 1, x + 1, :], stem[plane].t()), plane
    down, conv = trunk["block2.0.downsample.0.kernel"], ours["block2.0.downsample.0.weight"]
    assert torch.equal(conv.reshape(down.shape), down)  # spconv's 1³ conv: features @ weight.view(in, out)
    smlp = original["state"]["model"]
    assert torch.equal(ours["head.clf.2.weight"], smlp["module.trunk.2.head.clf.1.linear.weight"])
    assert torch.equal(ours["head.clf.0.bias"], smlp["module.trunk.2.head.clf.0.linear.bias"])


def test_a_point_only_checkpoint_ignores_the_voxel_stack(tmp_path: Path):
    from tests.test_export import write_original_checkpoint

    write_original_checkpoint(tmp_path / "checkpoint-ep150.pth.tar", 1, POINT_HEAD)
    out = import_original_checkpoint(tmp_path / "checkpoint-ep150.pth.tar", tmp_path / "i.pth", voxel_stack="minkowski")
    state = load_checkpoint(out)
    assert state["config"]["representations"] == ["point"] and "voxel_backbone" not in state["config"]
    assert not any("voxel" in key for key in state["model"])


@pytest.mark.parametrize(
    ("drop", "replace", "message"),
    [
        ("module.trunk.3.block2.0.downsample.1.bn.running_var", {}, "module.trunk.3.block2.0.downsample.1.bn."
         "running_var is missing"),
        (None, {"module.trunk.2.block1.0.conv1.kernel": torch.zeros(26, 32, 32)}, "module.trunk.2.block1.0.conv1."
         "kernel has shape [26, 32, 32], a Res16UNet34 voxel trunk with this input and head has [27, 32, 32]"),
        (None, {"module.trunk.3.head.clf.1.linear.weight": torch.zeros(128, 200)}, "module.trunk.3.head.clf.1.linear."
         "weight has shape [128, 200]"),
        (None, {"module.trunk.2.final.kernel": torch.zeros(256, 1)}, "unexpected key module.trunk.2.final.kernel"),
        ("module.trunk.2.conv0p1s1.kernel", {}, "module.trunk.2.conv0p1s1.kernel is missing"),
        ("module.trunk.2.head.clf.0.linear.weight", {}, "module.trunk.2.head.clf.0.linear.weight is missing"),
        ("queue_other", {}, "train_criterion.queue_other is missing"),
        (None, {"queue_other": torch.zeros(64, QUEUE)}, "train_criterion.queue_other is [64, 64], it must have the "
         "point queue's shape [128, 64]"),
    ],
)  # fmt: skip
def test_a_bad_or_partial_voxel_trunk_is_a_one_line_error_naming_the_file_and_the_key(
    joint, tmp_path: Path, drop: str | None, replace: dict, message: str
):
    path = tmp_path / "checkpoint-ep400.pth.tar"
    save_original(path, shapes_only(joint[1]["state"], drop=drop, **replace))
    with pytest.raises(OriginalImportError) as caught:
        import_original_checkpoint(path, tmp_path / "imported.pth")
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text
    assert not (tmp_path / "imported.pth").exists()


def test_a_joint_checkpoint_without_its_momentum_voxel_trunk_is_refused(joint, tmp_path: Path):
    path = tmp_path / "checkpoint-ep400.pth.tar"
    state = shapes_only(joint[1]["state"])
    state["model"] = {k: v for k, v in state["model"].items() if not k.startswith("module.trunk.3.")}
    save_original(path, state)
    with pytest.raises(OriginalImportError, match=r"no module\.trunk\.3\.\* keys: a joint model needs both"):
        import_original_checkpoint(path, tmp_path / "imported.pth")


def test_the_cli_imports_a_joint_checkpoint_on_spconv_and_names_a_bad_trunk_in_one_line(joint, tmp_path: Path):
    path, original = joint
    out = tmp_path / "imported.pth"
    result = run_cli("import-original", str(path), "--out", str(out), "--voxel-stack", "spconv")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    state = load_checkpoint(out)
    assert state["config"]["voxel_backbone"]["stack"] == "spconv"
    assert torch.equal(
        voxel_part(state["model"], 3)["block8.1.conv2.weight"], original["encoders"][3]["block8.1.conv2.weight"]
    )

    bad = tmp_path / "checkpoint-ep500.pth.tar"
    save_original(bad, shapes_only(original["state"], drop="module.trunk.2.bntr7.bn.weight"))
    result = run_cli("import-seed", str(bad), "--out", str(tmp_path / "bad.pth"))
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if "deprecated" not in line]
    assert lines == [
        f"depthcontrast: error: {bad}: module.trunk.2.bntr7.bn.weight is missing: not a complete MinkUNet34 "
        "(Res16UNet34) voxel trunk"
    ]


def test_the_cli_on_minkowski_without_minkowskiengine_names_the_install_step(joint, tmp_path: Path):
    from depthcontrast.models.minkunet_me import INSTALL_HINT, minkowski_available

    if minkowski_available():
        pytest.skip("MinkowskiEngine is installed: the minkowski import is tested below")
    path, _ = joint
    result = run_cli("import-original", str(path), "--out", str(tmp_path / "i.pth"), "--voxel-stack", "minkowski")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"depthcontrast: error: {INSTALL_HINT}"]
    assert not (tmp_path / "i.pth").exists()


# ------------------------------------------------------------------ on a real MinkowskiEngine
def small_cloud_batch(spec, clouds: int = 2, points: int = 3000) -> dict:
    """Voxelised random indoor-sized clouds (xyz + rgb/255 − 0.5) on the run's grid."""
    rng = np.random.default_rng(0)
    views = []
    for _ in range(clouds):
        xyz = rng.uniform(-1.0, 1.0, (points, 3)) * np.array([1.5, 1.5, 0.8])
        rgb = rng.uniform(0, 255, (points, 3)) / 255 - 0.5
        views.append(voxelize(np.concatenate([xyz, rgb], axis=1).astype(np.float32), spec.voxel_backbone.grid))
    return collate_voxels(views)


def test_the_cli_imports_a_joint_checkpoint_onto_minkowskiengine_exactly_with_the_spconv_embedding(
    joint, imported, tmp_path: Path
):
    pytest.importorskip("MinkowskiEngine")
    path, original = joint
    out = tmp_path / "imported.pth"
    result = run_cli("import-original", str(path), "--out", str(out), "--voxel-stack", "minkowski")
    assert result.returncode == 0, result.stderr
    me = load_checkpoint(out)
    assert me["config"]["voxel_backbone"]["stack"] == "minkowski"
    assert {**me["config"]["voxel_backbone"], "stack": "spconv"} == imported["config"]["voxel_backbone"]
    me_model, sp_model = build_model(parse_run(me["config"])), build_model(parse_run(imported["config"]))
    me_model.load_state_dict(me["model"], strict=True)
    sp_model.load_state_dict(imported["model"], strict=True)
    for index, encoder in original["encoders"].items():
        ours = voxel_part(me["model"], index)
        trunk = {k: v for k, v in as_original(encoder).items() if not k.startswith("head.")}
        expected = relayout(trunk, LAYOUT_04, LAYOUT_05)
        direct, _ = minkowski_state(encoder, LAYOUT_05)  # the spconv weights written straight in 0.5.4's layout
        back = relayout(expected, LAYOUT_05, LAYOUT_04)  # and the round trip to the original's layout
        assert expected.keys() == direct.keys() == back.keys() == trunk.keys()
        for key, tensor in expected.items():
            assert torch.equal(ours[key], tensor) and torch.equal(direct[key], tensor), (index, key)
            assert torch.equal(back[key], trunk[key]), (index, key)
        assert torch.equal(ours["head.clf.2.weight"], voxel_part(imported["model"], index)["head.clf.2.weight"])
    batch = small_cloud_batch(parse_run(me["config"]))
    me_model.eval()
    sp_model.eval()
    with torch.no_grad():
        me_embedding = me_model.query_encoders["voxel"](batch)
        sp_embedding = sp_model.query_encoders["voxel"](batch)
    assert me_embedding.shape == (2, HEAD[-1]) and me_embedding.abs().max() > 0.01
    torch.testing.assert_close(me_embedding, sp_embedding, atol=PARITY_TOLERANCE, rtol=PARITY_TOLERANCE)
