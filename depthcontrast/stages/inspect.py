"""`depthcontrast inspect`: a folder of shards in a few lines, and every shard's sha256 checked against index.json."""

from __future__ import annotations

from pathlib import Path

from depthcontrast.data.shard_dataset import ShardDataset


def inspect_shards(shard_dir: Path, head: int = 5, quick: bool = False) -> list[str]:
    """The lines that describe `shard_dir`: samples, shards, points, features, labels, the first `head` samples.
    Unless `quick`, every shard is hashed (not only those behind the samples shown); a mismatch is a DataError."""
    dataset = ShardDataset(shard_dir, verify=not quick)
    index = dataset.index
    if not quick:
        dataset.verify_all()
    features = ", ".join(f"{name} ({index.feature_samples.get(name, 0)})" for name in index.feature_names) or "none"
    labels = f"{index.labelled_samples} labelled" if index.has_labels else "none"
    lines = [
        f"{shard_dir}: {len(dataset)} samples in {len(index.shards)} shards, {index.num_points} points; "
        f"features (samples with it): {features}; labels: {labels}; "
        f"{index.shifted_samples} stored relative to an origin"
    ]
    lines += [f"  feature {name} left out (only {count} samples had it; partial_features: drop)"
              for name, count in index.dropped_features.items()]  # fmt: skip
    checked = "not checked (--quick)" if quick else f"all {len(index.shards)} shards match index.json"
    lines.append(f"  sha256: {checked}")
    for i in range(min(head, len(dataset))):
        item = dataset[i]
        lines.append(f"  [{i}] {item['sample_id']}: {item['points'].shape[0]} points")
    return lines
