"""DepthContrast method: NCE loss, momentum encoders, queues, loss weighting, and 2-process gloo DDP."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from depthcontrast.distributed import batch_shuffle, batch_unshuffle, world_info
from depthcontrast.errors import ConfigError
from depthcontrast.method import DepthContrast, nce_logits, nce_loss

DIM = 8


class MeanLinear(nn.Module):
    """Stand-in encoder: [B, N, C] → mean over points → Linear → [B, DIM]; per-sample, no BatchNorm."""

    def __init__(self, channels: int = 3, dim: int = DIM):
        super().__init__()
        self.linear = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=1))


class MeanLinearBN(nn.Module):
    """Stand-in with BatchNorm, to check that the momentum update touches parameters only."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, DIM)
        self.norm = nn.BatchNorm1d(DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x.mean(dim=1)))


def keys_of(model: DepthContrast, name: str, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model.key_encoders[name](batch), dim=1)


def point_batch(batch: int, seed: int, channels: int = 3) -> torch.Tensor:
    return torch.randn(batch, 16, channels, generator=torch.Generator().manual_seed(seed))


# ---- the NCE loss ----------------------------------------------------------------------------


def test_nce_loss_matches_the_cross_entropy_formula_computed_by_hand():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k = rng.normal(size=(3, 4))
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    queue = rng.normal(size=(4, 5))
    queue /= np.linalg.norm(queue, axis=0, keepdims=True)
    temperature = 0.1

    expected_logits = np.concatenate([np.sum(q * k, axis=1, keepdims=True), q @ queue], axis=1) / temperature
    log_softmax_positive = expected_logits[:, 0] - np.log(np.exp(expected_logits).sum(axis=1))
    expected_loss = -log_softmax_positive.mean()

    args = (torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(queue), temperature)
    np.testing.assert_allclose(nce_logits(*args).numpy(), expected_logits, rtol=1e-12)
    assert nce_loss(*args).item() == pytest.approx(expected_loss, rel=1e-12)


def test_nce_loss_is_low_when_the_positive_is_the_nearest_key():
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    queue = F.normalize(torch.tensor([[-1.0, 0.2], [0.3, -1.0]]), dim=0)
    assert nce_loss(q, q, queue, 0.1) < 1e-3
    assert nce_loss(q, -q, queue, 0.1) > 5.0


# ---- momentum encoders -----------------------------------------------------------------------


def test_key_encoder_starts_as_a_frozen_copy_of_the_query_encoder():
    model = DepthContrast({"point": MeanLinear}, queue_size=8, embedding_dim=DIM)
    query, key = model.query_encoders["point"], model.key_encoders["point"]
    assert query is not key
    for param_q, param_k in zip(query.parameters(), key.parameters(), strict=True):
        assert torch.equal(param_q, param_k)
        assert param_q.requires_grad and not param_k.requires_grad


def test_momentum_update_is_m_key_plus_one_minus_m_query_on_parameters_only():
    torch.manual_seed(0)
    model = DepthContrast({"point": MeanLinearBN}, queue_size=8, embedding_dim=DIM, momentum=0.9).double().eval()
    with torch.no_grad():
        for param in model.query_encoders["point"].parameters():
            param.add_(torch.randn_like(param))
        model.query_encoders["point"].norm.running_mean.fill_(3.0)
    query_before = copy.deepcopy(model.query_encoders["point"].state_dict())
    key_before = copy.deepcopy(model.key_encoders["point"].state_dict())

    model({"point": (point_batch(2, 1).double(), point_batch(2, 2).double())})

    key_after = model.key_encoders["point"].state_dict()
    for name in ("linear.weight", "linear.bias", "norm.weight", "norm.bias"):
        expected = 0.9 * key_before[name] + (1 - 0.9) * query_before[name]
        torch.testing.assert_close(key_after[name], expected, rtol=0, atol=1e-15)
    assert torch.equal(key_after["norm.running_mean"], key_before["norm.running_mean"]), "buffers are not averaged"


def test_gradients_reach_the_query_encoder_only():
    model = DepthContrast({"point": MeanLinear}, queue_size=8, embedding_dim=DIM)
    loss, _ = model({"point": (point_batch(4, 1), point_batch(4, 2))})
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.query_encoders.parameters())
    assert all(p.grad is None for p in model.key_encoders.parameters())


# ---- queues ----------------------------------------------------------------------------------


def test_queue_starts_with_unit_columns_and_the_pointer_at_zero():
    model = DepthContrast({"point": MeanLinear, "voxel": MeanLinear}, queue_size=16, embedding_dim=DIM)
    for name in ("point", "voxel"):
        queue = model.queue_of(name)
        assert queue.shape == (DIM, 16)
        torch.testing.assert_close(queue.norm(dim=0), torch.ones(16))
        assert model.queue_pointer(name) == 0
    assert not torch.equal(model.queue_of("point"), model.queue_of("voxel"))


def test_keys_are_enqueued_fifo_and_the_pointer_wraps_around():
    torch.manual_seed(0)
    model = DepthContrast({"point": MeanLinear}, queue_size=6, embedding_dim=DIM)
    keys, pointers = [], []
    for step in range(4):
        key_batch = point_batch(2, 10 + step)
        model({"point": (point_batch(2, step), key_batch)})
        keys.append(keys_of(model, "point", key_batch))
        pointers.append(model.queue_pointer("point"))
    assert pointers == [2, 4, 0, 2]
    queue = model.queue_of("point")
    torch.testing.assert_close(queue[:, 0:2], keys[3].T)  # step 4 overwrote the oldest (step 1)
    torch.testing.assert_close(queue[:, 2:4], keys[1].T)
    torch.testing.assert_close(queue[:, 4:6], keys[2].T)


def test_queue_size_must_be_a_multiple_of_the_global_batch():
    model = DepthContrast({"point": MeanLinear}, queue_size=10, embedding_dim=DIM)
    with pytest.raises(ConfigError, match=r"queue size 10 .* not a multiple of the global batch 4 .*e\.g\. 12"):
        model({"point": (point_batch(4, 0), point_batch(4, 1))})
    with pytest.raises(ConfigError, match="global batch 3"):
        model.check_global_batch(3)
    model.check_global_batch(5)


# ---- loss terms and weighting ----------------------------------------------------------------


def two_format_model(**weights) -> DepthContrast:
    torch.manual_seed(0)
    return DepthContrast(
        {"point": MeanLinear, "voxel": lambda: MeanLinear(channels=4)},
        queue_size=8,
        embedding_dim=DIM,
        **weights,
    )


def two_format_inputs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {
        "point": (point_batch(4, 0), point_batch(4, 1)),
        "voxel": (point_batch(4, 2, channels=4), point_batch(4, 3, channels=4)),
    }


def test_each_term_pairs_the_right_queries_keys_and_queue_before_enqueueing():
    model = two_format_model(loss_types=("NPID", "CMC"))
    inputs = two_format_inputs()
    queues = {name: model.queue_of(name).clone() for name in ("point", "voxel")}
    with torch.no_grad():
        q = {name: F.normalize(model.query_encoders[name](inputs[name][0]), dim=1) for name in inputs}
    _, terms = model(inputs)
    k = {name: keys_of(model, name, inputs[name][1]) for name in inputs}  # momentum is a no-op here: q == k params

    expected = {
        "npid": nce_loss(q["point"], k["point"], queues["point"], 0.1),
        "npid_other": nce_loss(q["voxel"], k["voxel"], queues["voxel"], 0.1),
        "cmc_p2i": nce_loss(q["point"], k["voxel"], queues["voxel"], 0.1),
        "cmc_i2p": nce_loss(q["voxel"], k["point"], queues["point"], 0.1),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].detach(), value, msg=name)


@pytest.mark.parametrize(
    ("settings", "weights"),
    [
        (
            {
                "loss_types": ("NPID", "CMC"),
                "within_format_weights": (1.0, 2.0),
                "across_format_weights": (3.0, 4.0),
            },
            {"npid": 1.0, "npid_other": 2.0, "cmc_p2i": 3.0, "cmc_i2p": 4.0},
        ),
        # the original's point_vox_template (indoor joint)
        (
            {
                "loss_types": ("NPID", "CMC"),
                "within_format_weights": (0.5, 0.5),
                "across_format_weights": (0.5, 0.5),
            },
            {"npid": 0.5, "npid_other": 0.5, "cmc_p2i": 0.5, "cmc_i2p": 0.5},
        ),
        # the original's point_vox_lidar_template: within-representation only
        (
            {
                "loss_types": ("NPID",),
                "within_format_weights": (1.0, 1.0),
                "across_format_weights": (0.0, 0.0),
            },
            {"npid": 1.0, "npid_other": 1.0, "cmc_p2i": 0.0, "cmc_i2p": 0.0},
        ),
        (
            {
                "loss_types": ("CMC",),
                "within_format_weights": (1.0, 1.0),
                "across_format_weights": (0.25, 0.75),
            },
            {"npid": 0.0, "npid_other": 0.0, "cmc_p2i": 0.25, "cmc_i2p": 0.75},
        ),
    ],
)
def test_total_loss_is_the_configured_weighting_of_the_terms(settings, weights):
    model = two_format_model(**settings)
    loss, terms = model(two_format_inputs())
    expected = sum(weight * terms[name] for name, weight in weights.items())
    torch.testing.assert_close(loss, expected)
    loss.backward()  # the enqueue after the logits must not break backward


def test_one_format_total_is_w0_times_npid():
    torch.manual_seed(0)
    model = DepthContrast({"point": MeanLinear}, queue_size=8, embedding_dim=DIM, within_format_weights=(0.7, 0.0))
    loss, terms = model({"point": (point_batch(4, 0), point_batch(4, 1))})
    assert list(terms) == ["npid"]
    torch.testing.assert_close(loss, 0.7 * terms["npid"])


@pytest.mark.parametrize(
    ("encoders", "settings", "message"),
    [
        ({"point": MeanLinear}, {"loss_types": ("CMC",)}, "CMC .* needs two representations"),
        ({"point": MeanLinear}, {"loss_types": ("NPID", "SIMCLR")}, "loss_types must be distinct entries"),
        ({"point": MeanLinear}, {"temperature": 0.0}, "temperature must be > 0"),
        ({"point": MeanLinear}, {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        (
            {"point": MeanLinear},
            {"within_format_weights": (1.0,)},
            "within_format_weights must hold 2 numbers",
        ),
        ({"point": MeanLinear}, {"shuffle_keys": {"voxel": False}}, "unknown representations"),
        ({"a": MeanLinear, "b": MeanLinear, "c": MeanLinear}, {}, "need 1 or 2 representations"),
    ],
)
def test_bad_method_settings_are_config_errors(encoders, settings, message):
    with pytest.raises(ConfigError, match=message):
        DepthContrast(encoders, queue_size=8, embedding_dim=DIM, **settings)


def test_an_encoder_with_the_wrong_embedding_size_is_a_config_error():
    model = DepthContrast({"point": lambda: MeanLinear(dim=5)}, queue_size=8, embedding_dim=DIM)
    with pytest.raises(ConfigError, match=r"'point' encoder returns shape \[2, 5\]; expected \[batch, 8\]"):
        model({"point": (point_batch(2, 0), point_batch(2, 1))})


def test_point_keys_are_shuffled_by_default_and_voxel_keys_are_not():
    model = two_format_model()
    assert model.shuffle_keys == {"point": True, "voxel": False}


# ---- distributed -----------------------------------------------------------------------------


def test_single_process_batch_shuffle_round_trips():
    assert world_info().world_size == 1
    x = torch.arange(24.0).view(6, 4)
    shuffled, idx_unshuffle = batch_shuffle(x)
    assert sorted(shuffled[:, 0].tolist()) == x[:, 0].tolist()
    assert torch.equal(batch_unshuffle(shuffled, idx_unshuffle), x)


PER_RANK = 2
WORLD = 2


def _gloo_worker(rank: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=WORLD)
    try:
        x = torch.arange(PER_RANK * 3, dtype=torch.float32).view(PER_RANK, 3) + 100 * rank
        shuffled, idx_unshuffle = batch_shuffle(x)
        restored = batch_unshuffle(shuffled, idx_unshuffle)

        torch.manual_seed(0)  # same initial encoders and queues on every rank
        model = DepthContrast(
            {"point": MeanLinear, "voxel": lambda: MeanLinear(channels=4)},
            queue_size=8,
            embedding_dim=DIM,
            loss_types=("NPID", "CMC"),
            within_format_weights=(0.5, 0.5),
            across_format_weights=(0.5, 0.5),
        )
        inputs = {
            "point": (point_batch(PER_RANK, 10 + rank), point_batch(PER_RANK, 20 + rank)),
            "voxel": (point_batch(PER_RANK, 30 + rank, 4), point_batch(PER_RANK, 40 + rank, 4)),
        }
        loss, _ = model(inputs)
        loss.backward()
        torch.save(
            {
                "x": x,
                "shuffled": shuffled,
                "restored": restored,
                "keys": {name: keys_of(model, name, inputs[name][1]) for name in inputs},
                "queues": {name: model.queue_of(name).clone() for name in inputs},
                "pointers": {name: model.queue_pointer(name) for name in inputs},
            },
            Path(tmp) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_share_queues_in_rank_order_and_shuffle_round_trips(tmp_path):
    mp.spawn(_gloo_worker, args=(str(tmp_path),), nprocs=WORLD, join=True)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]

    all_rows = torch.cat([r["x"] for r in results])
    all_shuffled = torch.cat([r["shuffled"] for r in results])
    assert sorted(all_shuffled[:, 0].tolist()) == sorted(all_rows[:, 0].tolist())
    for result in results:
        assert torch.equal(result["restored"], result["x"])

    for name in ("point", "voxel"):
        expected = torch.cat([results[rank]["keys"][name] for rank in range(WORLD)]).T
        for result in results:
            assert result["pointers"][name] == WORLD * PER_RANK
            torch.testing.assert_close(result["queues"][name][:, : WORLD * PER_RANK], expected)
        torch.testing.assert_close(results[0]["queues"][name], results[1]["queues"][name])
