"""The two evaluation protocols, each returning the test confusion matrix.

Both train on per-point predictions at the backbone's fp2 points (`fp2_inds` index the input cloud, so
the label of each fp2 point is the label of the input point it sits on): PointNet++ SSG's fp2 level,
or every input point for PointNet-MSG, whose final features are per input point. Both score every point
of the test clouds: the fp2 points' class scores are carried to each input point by three-NN
inverse-distance interpolation (PointNet++'s segmentation protocol), so a test cloud of P points gives P
scored points (less the unlabelled), not only its fp2 points: far less sampling noise between seeds.

- linear: the backbone is frozen; its BatchNorm statistics are first estimated on the probe's training
  clouds (nothing else changes), then fp2 features of one seeded resampling per training cloud are
  computed once in eval mode, standardised with the training features' mean and std, and a linear
  classifier is trained on them with SGD. Both inits are thus normalised by the statistics of the same
  clouds: the pretrained backbone is not read with the statistics of augmented pretraining views, nor the
  random init with its initial mean 0 / variance 1, i.e. without any normalisation (docs/PROBE_DIAGNOSIS.md).
  `bn_statistics="loaded"` keeps the statistics as loaded instead.
- finetune: backbone + a 1x1-conv classifier trained end to end with SGD, the training clouds
  resampled afresh every epoch; the backbone's BatchNorm runs in training mode.

Clouds are resampled to a fixed point count (without replacement when a cloud has enough points);
the test clouds use one resampling shared by every protocol, init and seed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from depthcontrast.evaluate.metrics import confusion_matrix
from depthcontrast.evaluate.tasks import IGNORE_LABEL, Samples
from depthcontrast.models import ops
from depthcontrast.specs import TrainSettings

STANDARDISE_EPS = 1e-6
BN_STATISTICS = ("train_clouds", "loaded")  # linear probe: BatchNorm statistics of the training clouds, or as loaded


@dataclass
class Clouds:
    """Resampled clouds: xyz float32 [N, P, 3 + C] (xyz, then the backbone's feature columns), labels int64 [N, P]."""

    xyz: np.ndarray
    labels: np.ndarray


def resample(samples: Samples, count: int, rng: np.random.Generator) -> Clouds:
    """`count` points of every sample: a random subset, or all plus random repeats when it has fewer."""
    xyz, labels = [], []
    for points, point_labels in zip(samples.points, samples.labels, strict=True):
        available = len(points)
        if available >= count:
            index = rng.choice(available, count, replace=False)
        else:
            index = np.concatenate([rng.permutation(available), rng.integers(0, available, count - available)])
        xyz.append(points[index])
        labels.append(point_labels[index])
    return Clouds(np.stack(xyz).astype(np.float32), np.stack(labels).astype(np.int64))


def _batches(total: int, batch_size: int, rng: np.random.Generator | None = None) -> Iterator[np.ndarray]:
    order = rng.permutation(total) if rng is not None else np.arange(total)
    for start in range(0, total, batch_size):
        yield order[start : start + batch_size]


def _sgd(parameters: Iterator[nn.Parameter], settings: TrainSettings) -> torch.optim.SGD:
    return torch.optim.SGD(parameters, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)


def labels_at(labels: torch.Tensor, inds: torch.Tensor) -> torch.Tensor:
    """Labels [B, N] of the input points → labels [B, M] of the fp2 points (inds [B, M])."""
    return torch.gather(labels, 1, inds.long())


@torch.no_grad()
def estimate_bn_statistics(backbone: nn.Module, xyz: np.ndarray, batch_size: int, device: torch.device) -> None:
    """Set every BatchNorm's running mean and variance to their average over the batches of clouds xyz
    [N, P, 3 + C_in] (train-mode forward passes, in order, no gradient); weights are untouched and the
    backbone is left in eval mode."""
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: every batch counts alike
    backbone.train()
    try:
        for batch in _batches(len(xyz), batch_size):
            backbone(torch.from_numpy(xyz[batch]).to(device))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        backbone.eval()


def scores_at_inputs(scores: torch.Tensor, inds: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Class scores [B, K, M] at the fp2 points (inds [B, M] into xyz [B, P, 3 + C]) → [B, K, P] at every
    input point, by three-NN inverse-distance interpolation (the identity when fp2 is every input point)."""
    points = xyz[..., :3].contiguous()
    if inds.shape[1] == points.shape[1] and torch.equal(
        inds, torch.arange(points.shape[1], device=inds.device).expand_as(inds)
    ):
        return scores
    known = ops.gather_points(points, inds.long())
    return ops.three_nn_interpolate(points, known, scores.float().contiguous())


@torch.no_grad()
def backbone_features(
    backbone: nn.Module, xyz: np.ndarray, batch_size: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen (eval-mode) fp2 features [N, C, M] and fp2_inds [N, M] of clouds xyz [N, P, 3 + C_in], on the CPU."""
    backbone.eval()
    features, inds = [], []
    for batch in _batches(len(xyz), batch_size):
        out = backbone(torch.from_numpy(xyz[batch]).to(device))
        features.append(out["fp2_features"].float().cpu())
        inds.append(out["fp2_inds"].cpu())
    return torch.cat(features), torch.cat(inds)


def _feature_rows(features: torch.Tensor) -> torch.Tensor:
    """[N, C, M] fp2 features → rows [N*M, C]."""
    return features.transpose(1, 2).reshape(-1, features.shape[1])


def _point_rows(features: torch.Tensor, inds: torch.Tensor, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C, M] features and their fp2 labels → rows [N*M, C], labels [N*M]."""
    return _feature_rows(features), labels_at(torch.from_numpy(labels), inds).reshape(-1)


def linear_probe(
    backbone: nn.Module,
    train: Clouds,
    test: Clouds,
    num_classes: int,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    bn_statistics: str = BN_STATISTICS[0],
) -> np.ndarray:
    """Train a linear classifier on frozen fp2 features; the test confusion matrix [K, K].

    bn_statistics "train_clouds": the features come from a copy of `backbone` whose BatchNorm statistics
    are estimated on the training clouds (estimate_bn_statistics); "loaded": from `backbone` as it is.
    """
    if bn_statistics not in BN_STATISTICS:
        raise ValueError(f"bn_statistics must be one of {list(BN_STATISTICS)}, got {bn_statistics!r}")
    if bn_statistics == "train_clouds":
        backbone = copy.deepcopy(backbone)
        estimate_bn_statistics(backbone, train.xyz, settings.batch_size, device)
    train_features, train_inds = backbone_features(backbone, train.xyz, settings.batch_size, device)
    rows_per_batch = settings.batch_size * train_features.shape[2]  # a batch: the fp2 points of batch_size clouds
    train_x, train_y = _point_rows(train_features, train_inds, train.labels)
    test_features, test_inds = backbone_features(backbone, test.xyz, settings.batch_size, device)
    test_x = _feature_rows(test_features)
    scored = train_y != IGNORE_LABEL
    train_x, train_y = train_x[scored], train_y[scored]
    mean, std = train_x.mean(dim=0), train_x.std(dim=0) + STANDARDISE_EPS
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    classifier = nn.Linear(train_x.shape[1], num_classes).to(device)
    optimizer = _sgd(classifier.parameters(), settings)
    rng = np.random.default_rng(seed)
    for _ in range(settings.epochs):
        for batch in _batches(len(train_y), rows_per_batch, rng):
            loss = F.cross_entropy(classifier(train_x[batch].to(device)), train_y[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        logits = classifier(test_x.to(device)).cpu().reshape(*test_inds.shape, num_classes).transpose(1, 2)
        predicted = scores_at_inputs(logits, test_inds, torch.from_numpy(test.xyz)).argmax(dim=1)
    return confusion_matrix(test.labels.reshape(-1), predicted.numpy().reshape(-1), num_classes)


class Segmenter(nn.Module):
    """Backbone + per-point linear classifier (1x1 conv) on fp2 features: xyz → logits [B, K, M], fp2_inds."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Conv1d(backbone.out_channels, num_classes, kernel_size=1)

    def forward(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone(xyz)
        return self.classifier(out["fp2_features"]), out["fp2_inds"]


def finetune(
    backbone: nn.Module,
    train: Samples,
    test: Clouds,
    points: int,
    num_classes: int,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
) -> tuple[np.ndarray, Segmenter]:
    """Train backbone + classifier end to end; the test confusion matrix [K, K] and the trained model."""
    torch.manual_seed(seed)
    model = Segmenter(backbone, num_classes).to(device)
    optimizer = _sgd(model.parameters(), settings)
    for epoch in range(settings.epochs):
        rng = np.random.default_rng([seed, epoch])
        clouds = resample(train, points, rng)
        model.train()
        for batch in _batches(len(clouds.xyz), settings.batch_size, rng):
            logits, inds = model(torch.from_numpy(clouds.xyz[batch]).to(device))
            target = labels_at(torch.from_numpy(clouds.labels[batch]).to(device), inds)
            loss = F.cross_entropy(logits, target, ignore_index=IGNORE_LABEL)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    predicted, truth = [], []
    with torch.no_grad():
        for batch in _batches(len(test.xyz), settings.batch_size):
            xyz = torch.from_numpy(test.xyz[batch]).to(device)
            logits, inds = model(xyz)
            predicted.append(scores_at_inputs(logits, inds, xyz).argmax(dim=1).cpu())
            truth.append(torch.from_numpy(test.labels[batch]))
    return confusion_matrix(torch.cat(truth).numpy(), torch.cat(predicted).numpy(), num_classes), model
