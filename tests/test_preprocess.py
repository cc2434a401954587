"""The preprocess stage: every bad sample is quarantined with its reason, output is deterministic,
and a run killed with SIGKILL leaves no partial output and reruns to the same shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from depthcontrast.config import validate_config
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.errors import DataError
from depthcontrast.io_utils import TEMP_MARKER, sha256_file
from depthcontrast.stages.download import run_download
from depthcontrast.stages.preprocess import run_preprocess
from tests.conftest import CLI_ENV, run_cli

MIN_POINTS = 50


def plane_cloud(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-2, 2, size=(n, 2))
    z = 0.1 * np.sin(xy[:, :1] * 3) + 2.0
    return np.hstack([xy, z]).astype(np.float32)


def local_dataset(files: Path, **preprocess) -> dict:
    entry = {
        "source": {"kind": "local", "path": str(files)},
        "preprocess": {"min_points": MIN_POINTS, **preprocess},
    }
    return validate_config({"datasets": {"scans": entry}})["datasets"]["scans"]


def write_bad_and_good_scans(folder: Path) -> dict[str, str]:
    """One raw file per quarantine reason, plus good scans; returns file name -> expected reason."""
    folder.mkdir(parents=True)
    for i in range(3):
        np.save(folder / f"good_{i}.npy", plane_cloud(400 + i, seed=i))
    nan_cloud = plane_cloud(300, seed=9)
    nan_cloud[17, 1] = np.nan
    np.save(folder / "nan.npy", nan_cloud)
    inf_cloud = plane_cloud(300, seed=10)
    inf_cloud[3, 2] = np.inf
    np.save(folder / "inf.npy", inf_cloud)
    np.save(folder / "empty.npy", np.zeros((0, 3), np.float32))
    np.save(folder / "few.npy", plane_cloud(MIN_POINTS - 1, seed=11))
    np.save(folder / "strings.npy", np.array([["a", "b", "c"]] * 100))
    (folder / "garbage.ply").write_bytes(b"this is not a ply file at all\n" * 10)
    plane_cloud(101, seed=12).tofile(folder / "sweep.bin")  # 1212 bytes: not whole float32 x 4 points
    return {
        "nan.npy": "non_finite",
        "inf.npy": "non_finite",
        "empty.npy": "empty",
        "few.npy": "too_few_points",
        "strings.npy": "wrong_dtype",
        "garbage.ply": "unreadable",
        "sweep.bin": "truncated",
    }


def download_and_preprocess(files: Path, work: Path, workers: int = 1, **preprocess) -> Path:
    settings = local_dataset(files, **preprocess)
    run_download("scans", settings["source"], work / "raw")
    out = work / "shards"
    run_preprocess("scans", settings, work / "raw" / "MANIFEST.json", out, workers=workers)
    return out


def test_every_quarantine_reason_is_reported_and_good_scans_are_kept(tmp_path: Path):
    expected = write_bad_and_good_scans(tmp_path / "scans")
    out = download_and_preprocess(tmp_path / "scans", tmp_path / "work")
    report = json.loads((out / "quarantine.json").read_text())
    reasons = {entry["source"]: entry["reason"] for entry in report["entries"]}
    assert reasons == expected
    assert all(entry["detail"] for entry in report["entries"])
    assert report["num_quarantined"] == len(expected)
    dataset = ShardDataset(out)
    assert len(dataset) == 3
    assert sorted(dataset.sample_ids) == dataset.sample_ids
    kept = {dataset[i]["points"].shape[0] for i in range(3)}
    assert kept == {400, 401, 402}


def test_max_points_subsample_is_reproducible_and_bounded(tmp_path: Path):
    write_bad_and_good_scans(tmp_path / "scans")
    first = download_and_preprocess(tmp_path / "scans", tmp_path / "a", max_points=100)
    second = download_and_preprocess(tmp_path / "scans", tmp_path / "b", max_points=100)
    assert all(ShardDataset(first)[i]["points"].shape == (100, 3) for i in range(3))
    np.testing.assert_array_equal(ShardDataset(first)[1]["points"], ShardDataset(second)[1]["points"])


def test_xyz_scale_multiplies_the_stored_coordinates_after_the_point_limits(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "scan.npy", plane_cloud(400, seed=0) + np.float32(100.0))  # well away from the origin
    np.save(folder / "small.npy", plane_cloud(MIN_POINTS, seed=1) * np.float32(0.01))
    metres = ShardDataset(download_and_preprocess(folder, tmp_path / "m"))
    scaled = ShardDataset(download_and_preprocess(folder, tmp_path / "s", xyz_scale=0.05))
    assert scaled.sample_ids == metres.sample_ids  # the limits saw metres: the same samples kept
    for i in range(len(metres)):
        np.testing.assert_allclose(scaled[i]["points"], metres[i]["points"] * 0.05, rtol=1e-6, atol=1e-6)


def shard_hashes(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.glob("shard-*.h5"))}


def test_identical_inputs_give_byte_identical_shards_whatever_the_worker_count(tmp_path: Path):
    write_bad_and_good_scans(tmp_path / "scans")
    serial = download_and_preprocess(tmp_path / "scans", tmp_path / "serial", workers=1, samples_per_shard=2)
    parallel = download_and_preprocess(tmp_path / "scans", tmp_path / "parallel", workers=2, samples_per_shard=2)
    assert len(shard_hashes(serial)) == 2
    assert shard_hashes(serial) == shard_hashes(parallel)
    assert (serial / "index.json").read_bytes() == (parallel / "index.json").read_bytes()
    assert (serial / "quarantine.json").read_bytes() == (parallel / "quarantine.json").read_bytes()


def test_a_dataset_with_no_usable_sample_fails_clearly_and_writes_no_index(tmp_path: Path):
    folder = tmp_path / "scans"
    folder.mkdir()
    np.save(folder / "few.npy", plane_cloud(3, seed=0))
    with pytest.raises(Exception, match="no usable samples"):
        download_and_preprocess(folder, tmp_path / "work")
    assert not (tmp_path / "work" / "shards" / "index.json").exists()


def test_a_raw_file_changed_after_download_is_reported(tmp_path: Path):
    write_bad_and_good_scans(tmp_path / "scans")
    settings = local_dataset(tmp_path / "scans")
    run_download("scans", settings["source"], tmp_path / "raw")
    np.save(tmp_path / "scans" / "good_0.npy", plane_cloud(999, seed=0))
    with pytest.raises(DataError, match=r"good_0\.npy: size .* differs from the .* bytes in .*MANIFEST\.json"):
        run_preprocess("scans", settings, tmp_path / "raw" / "MANIFEST.json", tmp_path / "out")


@pytest.mark.slow
def test_sigkill_mid_run_leaves_no_partial_output_and_rerun_gives_the_same_shards(tmp_path: Path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(40):
        np.save(scans / f"scan_{i:03d}.npy", plane_cloud(60_000, seed=i))
    config = tmp_path / "config.yaml"
    entry = {
        "source": {"kind": "local", "path": str(scans)},
        "preprocess": {"samples_per_shard": 2, "max_points": None},
    }
    config.write_text(yaml.safe_dump({"datasets": {"scans": entry}}))
    common = ["--config", str(config), "--dataset", "scans", "--results", str(tmp_path / "results")]
    assert run_cli("download", *common).returncode == 0

    out = tmp_path / "results" / "shards" / "scans"
    command = [sys.executable, "-m", "depthcontrast", "preprocess", *common, "--workers", "1"]
    victim = subprocess.Popen(command, env=CLI_ENV)
    deadline = time.monotonic() + 120
    while not (out / "shard-00002.h5").exists():
        assert victim.poll() is None, "preprocess finished before it could be killed: make the data larger"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not (out / "index.json").exists()

    rerun = run_cli("preprocess", *common, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert not [p for p in out.iterdir() if TEMP_MARKER in p.name]
    clean_common = ["--config", str(config), "--dataset", "scans", "--results", str(tmp_path / "clean")]
    assert run_cli("download", *clean_common).returncode == 0
    assert run_cli("preprocess", *clean_common, "--workers", "1").returncode == 0
    clean = tmp_path / "clean" / "shards" / "scans"
    assert shard_hashes(out) == shard_hashes(clean)
    assert len(shard_hashes(out)) == 20
    assert (out / "index.json").read_bytes() == (clean / "index.json").read_bytes()
