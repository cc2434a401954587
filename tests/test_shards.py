"""HDF5 shards: writer, index and the torch Dataset reading them back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from depthcontrast.data.records import UNLABELLED, Sample
from depthcontrast.data.shard_dataset import ShardDataset, absolute_points
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.data.shards import INDEX_NAME, read_index
from depthcontrast.errors import DataError

QUANTUM_M = 0.001
# float32 rounding of quantum * steps, on top of the quantum/2 rounding of the writer
FLOAT32_SLACK_M = 1e-5


def make_samples(count: int, features: tuple[str, ...] = ("rgb",), labels: bool = True, seed: int = 0) -> list[Sample]:
    """Small samples of varied size with the requested features."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        p = int(rng.integers(50, 300))
        feats: dict[str, np.ndarray] = {}
        if "rgb" in features:
            feats["rgb"] = rng.integers(0, 256, (p, 3), dtype=np.uint8)
        if "intensity" in features:
            feats["intensity"] = rng.random((p, 1), dtype=np.float32)
        samples.append(
            Sample(
                sample_id=f"toy/scene{i:03d}/frame",
                points=rng.uniform(-5, 5, (p, 3)).astype(np.float32),
                features=feats,
                labels=rng.integers(-1, 20, p).astype(np.int32) if labels else None,
            )
        )
    return samples


def write(
    out: Path,
    samples: list[Sample],
    samples_per_shard: int = 2,
    compression: str = "lz4",
    quantum: float | None = None,
) -> None:
    with ShardWriter(
        out,
        dataset="toy",
        source="unit-test",
        params={"max_points": 50000, "compression": compression},
        samples_per_shard=samples_per_shard,
        compression=compression,
        compression_level=3,
        xyz_quantum_m=quantum,
    ) as writer:
        for sample in samples:
            writer.add(sample)


def collate_as_list(batch: list[dict]) -> list[dict]:
    return batch


@pytest.mark.parametrize("compression", ["none", "lz4", "zstd", "gzip", "blosc-lz4"])
def test_float_points_features_and_labels_read_back_exactly(tmp_path, compression):
    samples = make_samples(5)
    write(tmp_path, samples, compression=compression)
    dataset = ShardDataset(tmp_path)
    assert len(dataset) == 5
    assert dataset.feature_names == ["rgb"]
    assert dataset.has_labels
    assert dataset.sample_ids == [s.sample_id for s in samples]
    for i, sample in enumerate(samples):
        item = dataset[i]
        assert item["index"] == i and item["sample_id"] == sample.sample_id
        assert item["points"].dtype == np.float32
        np.testing.assert_array_equal(item["points"], sample.points)
        assert item["features"].dtype == np.uint8
        np.testing.assert_array_equal(item["features"], sample.features["rgb"])
        assert item["labels"].dtype == np.int32
        np.testing.assert_array_equal(item["labels"], sample.labels)
    assert dataset[-1]["sample_id"] == samples[-1].sample_id
    with pytest.raises(IndexError):
        dataset[5]


def test_index_lists_shards_with_first_sample_and_totals(tmp_path):
    samples = make_samples(5)
    write(tmp_path, samples, samples_per_shard=2)
    index = read_index(tmp_path)
    assert [s.file for s in index.shards] == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    assert [s.first_sample for s in index.shards] == [0, 2, 4]
    assert index.num_samples == 5
    assert index.num_points == sum(s.num_points for s in samples)
    assert index.num_bytes == sum((tmp_path / s.file).stat().st_size for s in index.shards)
    assert index.params == {"compression": "lz4", "max_points": 50000}
    doc = json.loads((tmp_path / INDEX_NAME).read_text())
    assert doc["totals"] == {"samples": 5, "points": index.num_points, "bytes": index.num_bytes}


@pytest.mark.parametrize("compression", ["none", "lz4"])
def test_quantised_points_read_back_as_float32_metres_within_half_a_quantum(tmp_path, compression):
    samples = make_samples(4, labels=False)
    samples[3].points[0] = [120.0, -80.0, 3.0]  # beyond int16 range at 1 mm: that shard needs int32
    write(tmp_path, samples, compression=compression, quantum=QUANTUM_M)
    dataset = ShardDataset(tmp_path)
    assert not dataset.has_labels
    for i, sample in enumerate(samples):
        item = dataset[i]
        assert item["points"].dtype == np.float32
        assert "labels" not in item
        error = np.abs(item["points"].astype(np.float64) - sample.points.astype(np.float64)).max()
        assert error <= QUANTUM_M / 2 + FLOAT32_SLACK_M


def test_mixed_feature_types_are_stored_as_float32_columns_in_name_order(tmp_path):
    samples = make_samples(3, features=("rgb", "intensity"))
    write(tmp_path, samples)
    dataset = ShardDataset(tmp_path)
    assert dataset.feature_names == ["intensity", "rgb"]
    assert read_index(tmp_path).feature_channels == [1, 3]
    item = dataset[1]
    assert item["features"].dtype == np.float32
    np.testing.assert_array_equal(item["features"][:, :1], samples[1].features["intensity"])
    np.testing.assert_array_equal(item["features"][:, 1:], samples[1].features["rgb"].astype(np.float32))


@pytest.mark.parametrize(("compression", "quantum"), [("lz4", None), ("none", QUANTUM_M), ("zstd", QUANTUM_M)])
def test_same_samples_and_params_give_byte_identical_shards_and_index(tmp_path, compression, quantum):
    samples = make_samples(5, features=("rgb", "intensity"))
    write(tmp_path / "a", samples, compression=compression, quantum=quantum)
    time.sleep(1.1)  # HDF5 timestamps have one-second resolution: make any that slipped in differ
    write(tmp_path / "b", samples, compression=compression, quantum=quantum)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_shard_modified_after_indexing_is_reported_naming_the_file(tmp_path):
    write(tmp_path, make_samples(5))
    shard = tmp_path / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    dataset = ShardDataset(tmp_path, verify=True)
    dataset[0]  # shard 0 is intact
    with pytest.raises(DataError, match=r"shard-00001\.h5.*index.*disagree.*rerun preprocess"):
        dataset[2]


def test_dataloader_with_two_workers_reads_every_sample_once_after_parent_opened_shards(tmp_path):
    samples = make_samples(9)
    write(tmp_path, samples, samples_per_shard=4)
    dataset = ShardDataset(tmp_path)
    np.testing.assert_array_equal(dataset[8]["points"], samples[8].points)  # parent holds a handle
    loader = DataLoader(dataset, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate_as_list)
    seen = [item for batch in loader for item in batch]
    assert sorted(item["index"] for item in seen) == list(range(9))
    for item in seen:
        np.testing.assert_array_equal(item["points"], samples[item["index"]].points)
        np.testing.assert_array_equal(item["labels"], samples[item["index"]].labels)


def mixed_samples() -> list[Sample]:
    """Two samples with rgb + intensity, then one with intensity only, then one with rgb and no labels."""
    samples = make_samples(3, features=("rgb", "intensity")) + make_samples(1, features=("rgb",), labels=False, seed=5)
    samples[2].features.pop("rgb")
    samples[3].sample_id = "toy/scene003/frame"
    return samples


def test_features_some_samples_lack_are_stored_with_a_per_sample_presence_record(tmp_path):
    samples = mixed_samples()
    write(tmp_path, samples, samples_per_shard=2)  # the first shard has both features: written before the 4th
    dataset = ShardDataset(tmp_path)
    assert dataset.feature_names == ["intensity", "rgb"]
    assert dataset.index.feature_samples == {"intensity": 3, "rgb": 3}
    for i, sample in enumerate(samples):
        item = dataset[i]
        present = dict(zip(dataset.feature_names, item["features_present"].tolist(), strict=True))
        assert present == {"intensity": int("intensity" in sample.features), "rgb": int("rgb" in sample.features)}
        intensity, rgb = item["features"][:, :1], item["features"][:, 1:]
        expected_intensity = sample.features.get("intensity", np.zeros((sample.num_points, 1), np.float32))
        np.testing.assert_array_equal(intensity, expected_intensity)
        np.testing.assert_array_equal(rgb, sample.features.get("rgb", np.zeros((sample.num_points, 3))))


def test_a_feature_first_met_after_a_shard_was_written_rewrites_that_shard(tmp_path):
    samples = make_samples(4, features=("rgb",))
    samples[3].features["intensity"] = np.full((samples[3].num_points, 1), 0.25, np.float32)
    write(tmp_path, samples, samples_per_shard=2)
    dataset = ShardDataset(tmp_path)  # verifies every sha256 against the index
    dataset.verify_all()
    assert dataset.feature_names == ["intensity", "rgb"]
    assert [dataset[i]["features_present"].tolist() for i in range(4)] == [[0, 1], [0, 1], [0, 1], [1, 1]]
    np.testing.assert_array_equal(dataset[0]["features"][:, 1:], samples[0].features["rgb"])  # uint8 -> float32


def test_partial_features_drop_keeps_only_the_features_every_sample_has(tmp_path):
    with ShardWriter(tmp_path, "toy", "unit-test", {}, 2, "none", 0, None, partial_features="drop") as writer:
        for sample in mixed_samples():
            writer.add(sample)
    index = read_index(tmp_path)
    assert index.feature_names == [] and index.dropped_features == {"intensity": 3, "rgb": 3}
    assert "features" not in ShardDataset(tmp_path)[0]


def test_samples_without_labels_are_unlabelled_in_a_dataset_with_labels(tmp_path):
    samples = mixed_samples()
    write(tmp_path, samples, samples_per_shard=3)
    dataset = ShardDataset(tmp_path)
    assert dataset.has_labels and dataset.index.labelled_samples == 3
    np.testing.assert_array_equal(dataset[3]["labels"], np.full(samples[3].num_points, UNLABELLED))
    np.testing.assert_array_equal(dataset[0]["labels"], samples[0].labels)


def test_origins_are_stored_per_sample_and_give_the_absolute_points_back(tmp_path):
    samples = make_samples(3)
    samples[1].origin = np.array([637_012.0, 4_851_877.0, 112.0])
    write(tmp_path, samples)
    dataset = ShardDataset(tmp_path)
    assert dataset.index.shifted_samples == 1
    np.testing.assert_array_equal(dataset[0]["origin"], np.zeros(3))
    np.testing.assert_array_equal(absolute_points(dataset[1]), samples[1].points.astype(np.float64) + samples[1].origin)


def test_a_feature_with_other_channels_is_rejected_naming_the_sample(tmp_path):
    samples = make_samples(3)
    samples[2].features = {"rgb": np.zeros((samples[2].num_points, 4), np.uint8)}
    with pytest.raises(DataError, match=r"toy/scene002/frame: feature 'rgb' has 4 channels"):
        write(tmp_path, samples)
    assert not (tmp_path / INDEX_NAME).exists()


def test_rerun_sweeps_temp_files_and_deletes_stale_extra_shards(tmp_path):
    write(tmp_path, make_samples(7), samples_per_shard=2)
    assert len(list(tmp_path.glob("shard-*.h5"))) == 4
    leftover = tmp_path / ".shard-00000.h5.tmp-killedrun"
    leftover.write_bytes(b"half a shard")
    write(tmp_path, make_samples(3), samples_per_shard=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "shard-00000.h5", "shard-00001.h5"]
    assert len(ShardDataset(tmp_path)) == 3


def test_exception_mid_write_leaves_no_index_and_no_temp_files(tmp_path):
    write(tmp_path, make_samples(2))  # an earlier complete run
    with (
        pytest.raises(RuntimeError, match="reader crashed"),
        ShardWriter(tmp_path, "toy", "unit-test", {}, 2, "lz4", 3, None) as writer,
    ):
        for sample in make_samples(3):
            writer.add(sample)
        raise RuntimeError("reader crashed")
    assert not (tmp_path / INDEX_NAME).exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    with pytest.raises(DataError, match=r"index not found.*run the preprocess stage"):
        ShardDataset(tmp_path)


def test_non_finite_points_cannot_be_quantised_and_name_the_sample(tmp_path):
    samples = make_samples(3)
    samples[1].points[5, 2] = np.nan
    with pytest.raises(DataError, match=r"toy/scene001/frame.*out of range"):
        write(tmp_path, samples, quantum=QUANTUM_M)


def test_corrupt_index_is_a_data_error(tmp_path):
    write(tmp_path, make_samples(2))
    (tmp_path / INDEX_NAME).write_text('{"schema_version": 1, "shards": [')
    with pytest.raises(DataError, match=r"index\.json: not a valid shard index"):
        read_index(tmp_path)
