"""MinkUNet34 on a real MinkowskiEngine 0.5.4 (`stack: minkowski`) and its bridge to the spconv build.

The bridge: the same weights in both stacks (through export/minkowski.py's conversion) give the same block8
features per voxel, the same embeddings and the same input gradients; the conversion round-trips exactly; a
MinkowskiEngine run trains through the CLI and its minkunet_seg export loads strictly into a real Res16UNet34.
`python3 bootstrap.py test` builds and installs MinkowskiEngine before the tests (tests/test_minkowski_build.py
fails in CI when it is missing), so these tests run there.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ME = pytest.importorskip("MinkowskiEngine")
pytest.importorskip("spconv.pytorch")

from depthcontrast.checkpoint import load_checkpoint  # noqa: E402
from depthcontrast.data.voxelize import VoxelGrid, collate_voxels, voxelize  # noqa: E402
from depthcontrast.export import export_checkpoint  # noqa: E402
from depthcontrast.export.minkowski import (  # noqa: E402
    LAYOUT_04,
    LAYOUT_05,
    Res16UNet34StandIn,
    minkowski_state,
    relayout,
    spconv_state,
)
from depthcontrast.models.minkunet import MinkUNet34Encoder  # noqa: E402
from depthcontrast.models.minkunet_me import MinkUNet34MEEncoder, Res16UNet34, to_sparse_tensor  # noqa: E402
from tests.conftest import run_cli  # noqa: E402
from tests.test_voxel import MINKUNET_RUN  # noqa: E402

GRID = VoxelGrid((0.25, 0.25, 0.25), (-3.2, -3.2, -3.2, 3.2, 3.2, 3.2), 1, 100000)  # the original's: first point
MEAN_GRID = VoxelGrid(GRID.voxel_size, GRID.point_range, 5, 100000)  # the mean of up to 5 points per voxel
HEAD = (256, 64, 32)
# float32 through 34 layers, summed in different orders by the two libraries (measured gaps are ~1e-6 relative)
RTOL, ATOL = 1e-4, 1e-5


def clouds(batch: int = 2, n: int = 3000, seed: int = 0, grid: VoxelGrid = GRID) -> dict:
    """A batch of voxelised random rooms: xyz in ±3 m, RGB features (as the original's rgb/255 − 0.5)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batch):
        xyz = rng.uniform(-3.0, 3.0, (n, 3)).astype(np.float32)
        rgb = rng.uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
        out.append(voxelize(np.concatenate([xyz, rgb], axis=1), grid))
    return collate_voxels(out)


def randomised(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Random weights and BatchNorm statistics, so that nothing is at its identity initialisation."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.1
                if name.endswith("running_var"):
                    values = 1.0 + values.abs()
                tensor.copy_(values)
    return module


def spconv_and_minkowski(seed: int = 1) -> tuple[MinkUNet34Encoder, MinkUNet34MEEncoder]:
    spconv_encoder = randomised(MinkUNet34Encoder(3, GRID.grid_size[::-1].tolist(), HEAD), seed)
    state, _ = minkowski_state(spconv_encoder.state_dict())
    head = {key: tensor for key, tensor in spconv_encoder.state_dict().items() if key.startswith("head.")}
    me_encoder = MinkUNet34MEEncoder(3, HEAD)
    me_encoder.load_state_dict({**state, **head}, strict=True)
    return spconv_encoder, me_encoder


def test_the_minkowski_res16unet34_has_sts_names_shapes_and_the_originals_batchnorm():
    model = Res16UNet34(3)
    stand_in = Res16UNet34StandIn(3).state_dict()
    ours = model.state_dict()
    assert list(ours) == list(stand_in)
    assert all(ours[key].shape == stand_in[key].shape for key in ours)
    assert ours["conv0p1s1.kernel"].shape == (27, 3, 32) and ours["block2.0.downsample.0.kernel"].shape == (32, 64)
    assert model.bn0.bn.momentum == 0.02 and model.block1[0].norm1.bn.momentum == 0.1
    assert model.block2[0].downsample[1].bn.momentum == 0.02 and model.bn0.bn.eps == 1e-5


def test_block8_features_per_voxel_match_between_the_stacks_with_the_same_weights():
    spconv_encoder, me_encoder = spconv_and_minkowski()
    spconv_encoder.eval(), me_encoder.eval()
    batch = clouds()
    features = batch["features"][:, 3:].contiguous()
    with torch.no_grad():
        spconv_out = type(spconv_encoder).__mro__[1].forward(spconv_encoder, {**batch, "features": features})
        me_out = Res16UNet34.forward(me_encoder, to_sparse_tensor(batch, features))
    # spconv rows are (batch, z, y, x); MinkowskiEngine's (batch, x, y, z): compare voxel by voxel
    spconv_rows = {tuple(c): i for i, c in enumerate(spconv_out.indices[:, [0, 3, 2, 1]].tolist())}
    me_coords = me_out.C.tolist()
    assert len(me_coords) == len(spconv_rows) == len(batch["coords"])
    order = torch.tensor([spconv_rows[tuple(c)] for c in me_coords])
    torch.testing.assert_close(me_out.F, spconv_out.features[order], rtol=RTOL, atol=ATOL)


# Mean voxels in eval mode: in train mode their batch statistics leave some channels nearly constant and the
# gradient of the max-pool ties on all-zero channels with 1e-7 noise (measured: 1e-3 of the gradient scale,
# both stacks deterministic), a conditioning effect, not a difference of the networks
@pytest.mark.parametrize(("train", "grid"), [(False, GRID), (True, GRID), (False, MEAN_GRID)],
                         ids=["eval-first-point", "train-first-point", "eval-mean"])  # fmt: skip
def test_embeddings_and_input_gradients_match_between_the_stacks(train: bool, grid: VoxelGrid):
    spconv_encoder, me_encoder = spconv_and_minkowski(seed=2)
    spconv_encoder.train(train), me_encoder.train(train)
    batch = clouds(seed=3, grid=grid)
    weights = torch.randn(2, HEAD[-1], generator=torch.Generator().manual_seed(4))
    results = []
    for encoder in (spconv_encoder, me_encoder):
        features = batch["features"].clone().requires_grad_(True)
        embedding = encoder({**batch, "features": features})
        (embedding * weights).sum().backward()
        results.append((embedding.detach(), features.grad))
    (spconv_embedding, spconv_grad), (me_embedding, me_grad) = results
    torch.testing.assert_close(me_embedding, spconv_embedding, rtol=RTOL, atol=ATOL)
    assert spconv_grad[:, 3:].abs().max() > 0  # the RGB columns get gradient, x, y, z do not (not read)
    torch.testing.assert_close(me_grad, spconv_grad, rtol=RTOL, atol=ATOL)
    scale = spconv_grad.abs().max()
    print(f"max |Δ| embedding {(me_embedding - spconv_embedding).abs().max():.2e}, gradient "
          f"{(me_grad - spconv_grad).abs().max() / scale:.2e} of its max")  # fmt: skip


def test_parameter_gradients_are_finite_and_have_the_models_shapes():
    _, me_encoder = spconv_and_minkowski(seed=5)
    me_encoder.train()
    embedding = me_encoder(clouds(seed=6))
    assert embedding.shape == (2, HEAD[-1])
    embedding.pow(2).sum().backward()
    for name, parameter in me_encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.shape == parameter.shape, name
        assert torch.isfinite(parameter.grad).all(), name
    assert me_encoder.conv0p1s1.kernel.grad.abs().sum() > 0


def test_the_conversion_round_trips_exactly_both_ways_and_between_generations():
    spconv_encoder, me_encoder = spconv_and_minkowski(seed=7)
    me = me_encoder.state_dict()
    back = spconv_state(me)
    assert back.keys() == spconv_encoder.state_dict().keys()
    assert all(torch.equal(back[key], spconv_encoder.state_dict()[key]) for key in back)
    again, _ = minkowski_state(back)
    assert all(torch.equal(again[key], me[key]) for key in again)  # ME → spconv → ME
    old = relayout(me, LAYOUT_05, LAYOUT_04)
    assert not torch.equal(old["block1.0.conv1.kernel"], me["block1.0.conv1.kernel"])  # block planes reordered
    assert torch.equal(old["conv0p1s1.kernel"], me["conv0p1s1.kernel"])  # non-block convs: the same order
    restored = relayout(old, LAYOUT_04, LAYOUT_05)
    assert all(torch.equal(restored[key], me[key]) for key in me)


def test_a_missing_minkowskiengine_is_one_line_naming_the_install_step(monkeypatch: pytest.MonkeyPatch):
    import sys

    from depthcontrast.errors import ConfigError
    from depthcontrast.models.encoders import build_voxel_encoder
    from depthcontrast.specs import VoxelBackbone, voxel_backbone

    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)
    block = {"name": "minkunet", "stack": "minkowski", "voxel_size": [0.05] * 3, "point_range": [-1.0] * 3 + [1.0] * 3}
    spec: VoxelBackbone = voxel_backbone({**block, "max_points_per_voxel": 1, "max_voxels": 10, "features": ["rgb"]})
    with pytest.raises(ConfigError) as error:
        build_voxel_encoder(spec, 128)
    message = str(error.value)
    assert "\n" not in message and "python -m depthcontrast.minkowski_build --install" in message
    assert "stack: spconv" in message


# ---------------------------------------------------------------- through the CLI, on the built-in rooms
# the CPU MinkUNet run of tests/test_voxel.py on MinkowskiEngine, with 0.4 m voxels
MINK_RUN = {**MINKUNET_RUN, "voxel_backbone": {**MINKUNET_RUN["voxel_backbone"], "stack": "minkowski",
                                               "voxel_size": [0.4, 0.4, 0.4]}}  # fmt: skip
JOINT_RUN = {
    **MINK_RUN,
    "representations": ["point", "voxel"],
    "backbone": {"name": "pointnet2_ssg", "npoints": [128, 64, 32, 16]},
    "loss": {
        "num_negatives": 48,
        "loss_types": ["NPID", "CMC"],
        "within_format_weights": [0.5, 0.5],
        "across_format_weights": [0.5, 0.5],
    },
}


@pytest.fixture(scope="module")
def indoor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    results = tmp_path_factory.mktemp("minkowski_runs") / "results"
    config = results.parent / "config.yaml"
    datasets = {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}, "preprocess": {"max_points": 1500}}}
    config.write_text(yaml.safe_dump({"datasets": datasets, "pretrain": {"mink": MINK_RUN, "joint": JOINT_RUN}}))
    for stage in ("download", "preprocess"):
        done = run_cli(stage, "--config", str(config), "--dataset", "demo_indoor", "--results", str(results))
        assert done.returncode == 0, done.stderr
    return config, results


def pretrained(indoor: tuple[Path, Path], run: str) -> Path:
    config, results = indoor
    out = results.parent / f"pretrain_{run}"
    if not (out / "last.pth").exists():
        done = run_cli("pretrain", run, "--config", str(config), "--results", str(results), "--out", str(out))
        assert done.returncode == 0, done.stderr
    return out


def losses(out: Path) -> list[dict[str, float]]:
    import csv

    with (out / "metrics.csv").open() as stream:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(stream)]


def test_a_minkowski_minkunet_run_trains_through_the_cli(indoor):
    out = pretrained(indoor, "mink")
    rows = losses(out)
    assert len(rows) == 2 and all(math.isfinite(row["loss"]) for row in rows)  # 48 frames, batch 24
    state = load_checkpoint(out / "last.pth")
    assert state["model"]["query_encoders.voxel.conv0p1s1.kernel"].shape == (27, 3, 32)  # MinkowskiEngine layout
    assert int(state["model"]["query_encoders.voxel.bntr7.bn.num_batches_tracked"]) == 2
    assert state["config"]["voxel_backbone"]["stack"] == "minkowski"


def test_a_joint_point_and_minkowski_run_trains_the_originals_indoor_terms(indoor):
    rows = losses(pretrained(indoor, "joint"))
    assert len(rows) == 2
    for row in rows:
        terms = [row[name] for name in ("npid", "npid_other", "cmc_p2i", "cmc_i2p")]
        assert all(math.isfinite(t) for t in terms)
        assert row["loss"] == pytest.approx(0.5 * sum(terms), rel=1e-4)


def test_a_minkowski_runs_minkunet_seg_export_loads_strictly_into_a_real_res16unet34(indoor, tmp_path: Path):
    out = pretrained(indoor, "mink")
    weights, sidecar = export_checkpoint(out / "last.pth", "minkunet_seg", tmp_path)
    import json

    meta = json.loads(sidecar.read_text())
    assert meta["missing_keys"] == [] == meta["unexpected_keys"]
    assert meta["downstream_config"]["loaded_by"] == ["MinkowskiEngine Res16UNet34 (strict)"]
    file = torch.load(weights, weights_only=True)
    model = Res16UNet34(3)
    model.load_state_dict(file["state_dict"], strict=True)  # a plain state_dict: the run's own tensors
    state = load_checkpoint(out / "last.pth")["model"]
    prefix = "query_encoders.voxel."
    assert all(torch.equal(file["state_dict"][key], state[prefix + key]) for key in file["state_dict"])
    assert not any(key.startswith("head.") for key in file["state_dict"])


# ---------------------------------------------------------------- on a GPU (the CUDA wheel of the same build step)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _on(batch: dict, device: str) -> dict:
    return {**batch, "features": batch["features"].to(device), "coords": batch["coords"].to(device)}


@pytest.mark.gpu
@needs_cuda
def test_the_gpu_minkowski_model_matches_the_cpu_one_and_the_gpu_spconv_one():
    spconv_encoder, me_encoder = spconv_and_minkowski(seed=8)
    batch = clouds(seed=9)
    for encoder in (spconv_encoder, me_encoder):
        encoder.eval()
    with torch.no_grad():
        cpu = me_encoder(batch)
        me_gpu = me_encoder.cuda()(_on(batch, "cuda")).cpu()
        spconv_gpu = spconv_encoder.cuda()(_on(batch, "cuda")).cpu()
    print(f"|GPU - CPU| {(me_gpu - cpu).abs().max():.2e}, |ME - spconv| on GPU {(me_gpu - spconv_gpu).abs().max():.2e}")
    # TF32 is off for convolutions by default in torch; the GPU kernels sum in other orders than the CPU ones
    torch.testing.assert_close(me_gpu, cpu, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(me_gpu, spconv_gpu, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@needs_cuda
def test_gpu_input_gradients_match_between_the_stacks():
    spconv_encoder, me_encoder = spconv_and_minkowski(seed=10)
    batch = _on(clouds(seed=11), "cuda")
    weights = torch.randn(2, HEAD[-1], generator=torch.Generator().manual_seed(12)).cuda()
    grads = []
    for encoder in (spconv_encoder.cuda().train(), me_encoder.cuda().train()):
        features = batch["features"].clone().requires_grad_(True)
        (encoder({**batch, "features": features}) * weights).sum().backward()
        grads.append(features.grad)
    # MinkowskiEngine's GPU backward sums with atomics: two identical calls differ by ~8e-4 of the largest gradient
    # (measured on an H200; spconv's repeat within 3e-7), so the bound is relative to that scale
    scale = grads[0].abs().max()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=float(2e-3 * scale))
