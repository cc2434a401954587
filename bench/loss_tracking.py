"""bf16 against fp32 over a few hundred steps, and how much of each epoch the GPU spends on the step.

Two runs through `Trainer.fit()` and the real data path (synthetic room shards → the original's indoor
augmentations → DataLoader workers), PointNet++ 1x at batch 32 × 20,000 points, the same settings and seed but for
the precision, logging every step. Printed:
- the per-step loss gap between the runs: mean and largest absolute, and the largest relative to the fp32 loss;
- per epoch of each run: samples/s, data wait and compute per step, and the compute share of the epoch's
  step time (the GPU-busy share: the rest is waiting for the loader). Epoch 0 holds torch.compile's warm-up.

    python bench/loss_tracking.py --epochs 10 --frames 640 --workers 10
"""

from __future__ import annotations

import argparse
import csv
import datetime
import statistics
import tempfile
from pathlib import Path

import torch
from pretrain_throughput import run_settings, write_shards  # bench/ is on sys.path when run as a script

from depthcontrast.launch import WorldInfo
from depthcontrast.train import Trainer


def train(shards: Path, out: Path, precision: str, epochs: int, workers: int, augment_on: str) -> list[dict]:
    """A fresh run to `epochs`; its metrics.csv rows."""
    run = run_settings(1, precision, 32, 20_000, workers, True, augment_on)
    run |= {"epochs": epochs, "log_every_steps": 1, "checkpoint_every_epochs": epochs}
    trainer = Trainer(f"track_{precision}", run, [shards], out, WorldInfo(0, 1, 0, None), "cuda")
    try:
        assert trainer.fit() == 0
    finally:
        trainer.close()
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def epoch_table(precision: str, rows: list[dict]) -> None:
    for epoch in sorted({int(row["epoch"]) for row in rows}):
        mine = [row for row in rows if int(row["epoch"]) == epoch]
        data = sum(float(row["data_s"]) for row in mine)
        compute = sum(float(row["compute_s"]) for row in mine)
        print(f"| {precision} | {epoch} | {len(mine)} | {32 * len(mine) / (data + compute):.1f} | "
              f"{1000 * data / len(mine):.1f} | {1000 * compute / len(mine):.1f} | "
              f"{100 * compute / (data + compute):.1f}% |")  # fmt: skip


def print_loss_gap(runs: dict[str, list[dict]]) -> None:
    fp32 = [float(row["loss"]) for row in runs["fp32"]]
    bf16 = [float(row["loss"]) for row in runs["bf16"]]
    gaps = [abs(a - b) for a, b in zip(fp32, bf16, strict=True)]
    print(f"steps {len(gaps)}: loss fp32 {fp32[0]:.3f} -> {fp32[-1]:.3f}, bf16 {bf16[0]:.3f} -> {bf16[-1]:.3f}; "
          f"gap mean {statistics.mean(gaps):.4f}, max {max(gaps):.4f}, "
          f"max relative {max(g / a for g, a in zip(gaps, fp32, strict=True)):.2%}; "
          f"last 20 steps' mean gap {statistics.mean(gaps[-20:]):.4f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--frames", type=int, default=640)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--augment-on", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument(
        "--precisions",
        nargs="+",
        choices=["fp32", "bf16"],
        default=["fp32", "bf16"],
        help="one alone gives only its busy share; both also give the loss gap",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/loss_tracking.py needs a CUDA GPU")
    print(f"# {datetime.date.today()} {torch.cuda.get_device_name()} | torch {torch.__version__} | PointNet++ 1x, "
          f"batch 32 x 20,000 points, {args.frames} frames, {args.epochs} epochs, {args.workers} workers, "
          f"augment_on {args.augment_on}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp) / "bench", args.frames)
        runs = {
            precision: train(shards, Path(tmp) / precision, precision, args.epochs, args.workers, args.augment_on)
            for precision in args.precisions
        }
    if len(runs) == 2:
        print_loss_gap(runs)
    print("| precision | epoch | steps | samples/s | data wait ms/step | compute ms/step | GPU-busy share |")
    print("|---|---|---|---|---|---|---|")
    for precision, rows in runs.items():
        epoch_table(precision, rows)


if __name__ == "__main__":
    main()
