"""DepthContrast: two views → query / momentum key encoders → InfoNCE against MoCo queues.

A representation is what of a sample an encoder reads ("point" or "voxel"). Each representation has a
query encoder, a momentum copy of it that encodes keys, and a queue of past keys (negatives).
With one representation the loss is the within-representation term `npid`; with two (first = point,
second = other) the original's four terms are computed:

    npid        query point, positive point key, negatives from the point queue
    npid_other  query other, positive other key, negatives from the other queue
    cmc_p2i     query point, positive other key, negatives from the other queue
    cmc_i2p     query other, positive point key, negatives from the point queue

and the total adds, for each entry of `loss_types`: "NPID" → w0·npid + w1·npid_other,
"CMC" → c0·cmc_p2i + c1·cmc_i2p (w = within_format_weights, c = across_format_weights: the original's
names). With one representation the total is w0·npid, as in the original.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from depthcontrast.distributed import all_gather_no_grad, batch_shuffle, batch_unshuffle, world_info
from depthcontrast.errors import ConfigError

# the original's settings: the schema's loss defaults (one representation; tests/test_defaults.py checks them)
ORIGINAL_QUEUE_SIZE = 131072  # NUM_NEGATIVES, indoor (LiDAR: 65536)
ORIGINAL_EMBEDDING_DIM = 128
ORIGINAL_TEMPERATURE = 0.1
ORIGINAL_MOMENTUM = 0.999  # hard-coded in the original's model
ORIGINAL_LOSS_TYPES = ("NPID",)
ORIGINAL_WITHIN_FORMAT_WEIGHTS = (1.0, 0.0)
ORIGINAL_ACROSS_FORMAT_WEIGHTS = (0.0, 0.0)
SHUFFLED_REPRESENTATIONS = ("point",)  # whose key batches are shuffled across ranks by default (the original)
LOSS_TYPES = ("NPID", "CMC")
MAX_REPRESENTATIONS = 2


def nce_logits(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE logits [B, 1 + K]: column 0 is q·k_pos, then q·queue, all divided by the temperature.

    q, k_pos: [B, D] (L2-normalised); queue: [D, K] of negatives (columns L2-normalised).
    """
    positive = (q * k_pos).sum(dim=1, keepdim=True)
    negative = q @ queue
    return torch.cat([positive, negative], dim=1) / temperature


def nce_loss(q: torch.Tensor, k_pos: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of `nce_logits` with the positive (column 0) as the target class."""
    logits = nce_logits(q, k_pos, queue, temperature)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target)


@dataclass(frozen=True)
class Term:
    """One NCE term: queries of one representation against keys (positive + queue) of another."""

    name: str
    query_representation: str
    key_representation: str


def loss_terms(representations: Sequence[str]) -> list[Term]:
    """The original's terms for one representation (npid) or two (npid, npid_other, cmc_p2i, cmc_i2p)."""
    if len(representations) == 1:
        return [Term("npid", representations[0], representations[0])]
    point, other = representations
    return [
        Term("npid", point, point),
        Term("npid_other", other, other),
        Term("cmc_p2i", point, other),
        Term("cmc_i2p", other, point),
    ]


def term_weights(
    num_representations: int,
    loss_types: Sequence[str],
    within_format_weights: Sequence[float],
    across_format_weights: Sequence[float],
) -> dict[str, float]:
    """Weight of each term in the total loss; terms not listed do not count."""
    if num_representations == 1:
        return {"npid": float(within_format_weights[0])}
    weights: dict[str, float] = {}
    for loss_type in loss_types:
        if loss_type == "NPID":
            weights["npid"] = float(within_format_weights[0])
            weights["npid_other"] = float(within_format_weights[1])
        else:
            weights["cmc_p2i"] = float(across_format_weights[0])
            weights["cmc_i2p"] = float(across_format_weights[1])
    return weights


def _check_settings(
    representations: Sequence[str],
    queue_size: int,
    embedding_dim: int,
    temperature: float,
    momentum: float,
    loss_types: Sequence[str],
    weights: Mapping[str, Sequence[float]],
) -> None:
    problems = []
    if not 1 <= len(representations) <= MAX_REPRESENTATIONS:
        problems.append(f"need 1 or {MAX_REPRESENTATIONS} representations, got {list(representations)}")
    problems += [
        f"representation name {name!r} must be a Python identifier"
        for name in representations
        if not name.isidentifier()
    ]
    if queue_size < 1:
        problems.append(f"queue size (num_negatives) must be ≥ 1, got {queue_size}")
    if embedding_dim < 1:
        problems.append(f"embedding_dim must be ≥ 1, got {embedding_dim}")
    if temperature <= 0:
        problems.append(f"temperature must be > 0, got {temperature}")
    if not 0 <= momentum < 1:
        problems.append(f"momentum must be in [0, 1), got {momentum}")
    unknown = [t for t in loss_types if t not in LOSS_TYPES]
    if not loss_types or unknown or len(set(loss_types)) != len(loss_types):
        problems.append(f"loss_types must be distinct entries of {list(LOSS_TYPES)}, got {list(loss_types)}")
    if "CMC" in loss_types and len(representations) < 2:
        problems.append("loss type CMC (cross-representation) needs two representations")
    problems += [f"{key} must hold 2 numbers, got {list(value)}" for key, value in weights.items() if len(value) != 2]
    if problems:
        raise ConfigError("DepthContrast: " + "; ".join(problems))


class DepthContrast(nn.Module):
    """Query encoders, momentum key encoders and one key queue per representation; forward returns the loss.

    encoders: representation → encoder factory (or module); an encoder maps a batch to [B, embedding_dim].
    Each forward is one training step: momentum update of the key encoders, keys under no_grad
    (batch-shuffled across ranks for representations in `shuffle_keys`), logits against the queues as they
    were, then the keys of every rank are enqueued.
    """

    def __init__(
        self,
        encoders: Mapping[str, Callable[[], nn.Module] | nn.Module],
        *,
        queue_size: int = ORIGINAL_QUEUE_SIZE,
        embedding_dim: int = ORIGINAL_EMBEDDING_DIM,
        temperature: float = ORIGINAL_TEMPERATURE,
        momentum: float = ORIGINAL_MOMENTUM,
        loss_types: Sequence[str] = ORIGINAL_LOSS_TYPES,
        within_format_weights: Sequence[float] = ORIGINAL_WITHIN_FORMAT_WEIGHTS,
        across_format_weights: Sequence[float] = ORIGINAL_ACROSS_FORMAT_WEIGHTS,
        shuffle_keys: Mapping[str, bool] | None = None,
    ):
        super().__init__()
        representations = tuple(encoders)
        _check_settings(
            representations,
            queue_size,
            embedding_dim,
            temperature,
            momentum,
            loss_types,
            {"within_format_weights": within_format_weights, "across_format_weights": across_format_weights},
        )
        shuffle_keys = dict(shuffle_keys or {})
        unknown = sorted(set(shuffle_keys) - set(representations))
        if unknown:
            raise ConfigError(f"DepthContrast: shuffle_keys names unknown representations {unknown}")
        self.representations = representations
        self.queue_size = queue_size
        self.embedding_dim = embedding_dim
        self.temperature = temperature
        self.momentum = momentum
        self.shuffle_keys = {name: shuffle_keys.get(name, name in SHUFFLED_REPRESENTATIONS) for name in representations}
        self.terms = loss_terms(representations)
        self.term_weights = term_weights(len(representations), loss_types, within_format_weights, across_format_weights)

        self.query_encoders = nn.ModuleDict(
            {name: make if isinstance(make, nn.Module) else make() for name, make in encoders.items()}
        )
        self.key_encoders = nn.ModuleDict({name: copy.deepcopy(q) for name, q in self.query_encoders.items()})
        for param in self.key_encoders.parameters():
            param.requires_grad_(False)
        for name in representations:
            self.register_buffer(f"queue_{name}", F.normalize(torch.randn(embedding_dim, queue_size), dim=0))
            self.register_buffer(f"queue_ptr_{name}", torch.zeros(1, dtype=torch.long))

    def queue_of(self, name: str) -> torch.Tensor:
        """The key queue [embedding_dim, queue_size] of representation `name`."""
        return getattr(self, f"queue_{name}")

    def queue_pointer(self, name: str) -> int:
        """Column where representation `name`'s next keys are written."""
        return int(getattr(self, f"queue_ptr_{name}")[0])

    def check_global_batch(self, global_batch: int) -> None:
        """Raise ConfigError unless the queue holds a whole number of global batches."""
        if global_batch < 1 or self.queue_size % global_batch:
            world = world_info().world_size
            suggestion = -(-self.queue_size // max(global_batch, 1)) * max(global_batch, 1)
            raise ConfigError(
                f"queue size {self.queue_size} (loss.num_negatives) is not a multiple of the global batch "
                f"{global_batch} ({global_batch // world} per process × {world} processes); set "
                f"num_negatives to a multiple of it (e.g. {suggestion}) or change the batch size"
            )

    def _embed(self, encoder: nn.Module, batch: Any, name: str) -> torch.Tensor:
        """L2-normalised embeddings [B, D] of `batch`, in the queue's dtype (float32 under bf16 autocast)."""
        out = encoder(*batch) if isinstance(batch, tuple) else encoder(batch)
        if out.ndim != 2 or out.shape[1] != self.embedding_dim:
            raise ConfigError(
                f"the {name!r} encoder returns shape {list(out.shape)}; "
                f"expected [batch, {self.embedding_dim}] (embedding_dim)"
            )
        return F.normalize(out.to(self.queue_of(name).dtype), dim=1)

    def _prepared_views(self, name: str, query: Any, key: Any) -> tuple[Any, Any]:
        """The two views as the encoders take them: an encoder with `prepare_views` (the point encoders: the first
        level's farthest-point sampling of both views in one launch) turns them into tuples of its arguments."""
        prepare = getattr(self.query_encoders[name], "prepare_views", None)
        return (query, key) if prepare is None else prepare(query, key)

    @torch.no_grad()
    def _momentum_update(self, name: str) -> None:
        """param_k ← m·param_k + (1 − m)·param_q on parameters only; BN buffers are not averaged (the original)."""
        query, key = self.query_encoders[name], self.key_encoders[name]
        for param_q, param_k in zip(query.parameters(), key.parameters(), strict=True):
            param_k.mul_(self.momentum).add_(param_q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def _keys(self, name: str, batch: Any) -> torch.Tensor:
        """Normalised keys [B, D] of `batch` from representation `name`'s key encoder (batch-shuffled across ranks
        where `shuffle_keys` says so)."""
        encoder = self.key_encoders[name]
        if not self.shuffle_keys[name]:
            return self._embed(encoder, batch, name)
        shuffled, idx_unshuffle = batch_shuffle(batch)
        return batch_unshuffle(self._embed(encoder, shuffled, name), idx_unshuffle)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, name: str, keys: torch.Tensor) -> None:
        """Write the keys of all ranks (rank order) at the pointer and advance it by the global batch."""
        keys = all_gather_no_grad(keys)
        global_batch = keys.shape[0]
        self.check_global_batch(global_batch)
        queue, pointer = self.queue_of(name), self.queue_pointer(name)
        queue[:, pointer : pointer + global_batch] = keys.T.to(queue.dtype)
        getattr(self, f"queue_ptr_{name}")[0] = (pointer + global_batch) % self.queue_size

    def forward(self, inputs: Mapping[str, tuple[Any, Any]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """inputs: representation → (query view batch, key view batch) → (total loss, {term name: loss})."""
        if set(inputs) != set(self.representations):
            expected = list(self.representations)
            raise ValueError(f"DepthContrast expects inputs for representations {expected}, got {list(inputs)}")
        views = {name: self._prepared_views(name, *inputs[name]) for name in self.representations}
        queries = {name: self._embed(self.query_encoders[name], views[name][0], name) for name in self.representations}
        keys: dict[str, torch.Tensor] = {}
        for name in self.representations:  # each key encoder steps towards its query encoder, then encodes
            self._momentum_update(name)
            keys[name] = self._keys(name, views[name][1])
        sizes = {
            f"{name} {kind}": len(batch)
            for kind, group in (("query", queries), ("key", keys))
            for name, batch in group.items()
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"DepthContrast: views of one batch differ in size: {sizes}")

        # Logits read the queues as they were before this step; the clone keeps the tensors that
        # backward needs intact when the keys are enqueued below.
        queues = {name: self.queue_of(name).clone() for name in self.representations}
        terms = {
            term.name: nce_loss(
                queries[term.query_representation],
                keys[term.key_representation],
                queues[term.key_representation],
                self.temperature,
            )
            for term in self.terms
        }
        for name in self.representations:
            self._dequeue_and_enqueue(name, keys[name])
        loss = sum(weight * terms[name] for name, weight in self.term_weights.items())
        return loss, terms
