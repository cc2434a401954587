"""The learning rate of a pretraining step: cosine (the original's per-epoch CosineAnnealingLR by default) or
constant, after an optional linear warmup."""

from __future__ import annotations

import math

from depthcontrast.specs import RunSpec


def learning_rate(run: RunSpec, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The rate of `step` (0-based) of `epoch`: from optimizer.lr down to schedule.final_lr over run.epochs."""
    base, schedule = run.optimizer.lr, run.schedule
    progress = epoch + (step / steps_per_epoch if schedule.per_step else 0.0)
    warmup = schedule.warmup_epochs
    if warmup and progress < warmup:
        return base * (progress + (1.0 / steps_per_epoch)) / warmup
    if schedule.name == "constant":
        return base
    final = schedule.final_lr
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress / run.epochs))
