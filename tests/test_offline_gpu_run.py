"""scripts/offline_gpu_run.py end to end on the CPU: pack a tiny run's datasets into parts, unpack them elsewhere,
run the stages there and resume them, collect the results."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from depthcontrast.evaluate.backbone import backbone_from_checkpoint
from tests.conftest import CLI_ENV
from tests.test_train import TINY_RUN

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "offline_gpu_run.py"
TINY_EVALUATION = {"seeds": [0], "points": 256, "linear": {"epochs": 1}, "finetune": {"epochs": 1}}


def script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=CLI_ENV,
                          timeout=900)  # fmt: skip


@pytest.mark.slow
def test_a_packed_run_is_unpacked_run_resumed_and_collected_elsewhere(tmp_path: Path) -> None:
    config = {
        "datasets": {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}}},
        "pretrain": {
            "other": {**TINY_RUN, "epochs": 1},
            "tiny": {**TINY_RUN, "epochs": 1, "evaluation": {"tasks": ["indoor_seg"], **TINY_EVALUATION}},
        },
        "evaluate": {"tasks": {"indoor_seg": {"dataset": "demo_indoor", "kind": "indoor_segmentation",
                                              "test_groups": ["room_06", "room_07"]}}},
    }  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    packed = script("pack", "tiny", "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "packed"),
                    "--part-mb", "1", "--no-wheels")  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    parts = sorted((tmp_path / "packed").glob("part-*"))
    assert len(parts) > 1 and all((part / "part.tar").stat().st_size < 2**20 + 2**19 for part in parts)
    packed_config = yaml.safe_load((tmp_path / "packed" / "staging" / "config.yaml").read_text())
    assert [packed_config["pretrain"][run].get("enabled") for run in ("other", "tiny")] == [False, True]

    root = tmp_path / "gpu"
    for part in parts:  # one at a time, as they arrive
        assert script("setup", str(part), "--root", str(root)).returncode == 0
    assert (root / "results" / "raw" / "demo_indoor" / "MANIFEST.json").exists()
    started = script("start", "tiny", "--root", str(root), "--workers", "1", "--device", "cpu")
    assert started.returncode == 0, started.stderr
    waited = script("wait", "--root", str(root), "--until-s", "600", "--every-s", "1")  # in the background
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "pretrain tiny for" in waited.stdout
    status = json.loads((root / "chain.json").read_text())
    names = [stage["name"] for stage in status["stages"]]
    assert names == ["preprocess demo_indoor", "pretrain tiny", "evaluate indoor_seg", "summarize"]
    assert status["state"] == "done" and all(stage["state"] == "done" for stage in status["stages"])
    summary = (root / "results" / "summary.md").read_text()
    assert "| tiny | 1 |" in summary and "| tiny | indoor_seg | finetune | 1 |" in summary

    (root / "results" / "summary.md").unlink()  # as if the machine went away before the last stage
    again = script("chain", "tiny", "--root", str(root), "--device", "cpu")
    assert again.returncode == 0, again.stderr
    states = [stage["state"] for stage in json.loads((root / "chain.json").read_text())["stages"]]
    assert states == ["skipped", "skipped", "skipped", "done"]
    assert script("wait", "--root", str(root), "--until-s", "1").returncode == 0

    assert script("collect", "--root", str(root), "--out", str(tmp_path / "back")).returncode == 0
    with tarfile.open(tmp_path / "back" / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"finetune/tiny/indoor_seg/metrics.json", "pretrain/tiny/metrics.csv"} <= names
    assert (tmp_path / "back" / "summary.md").read_text() == (root / "results" / "summary.md").read_text()
    encoder, whole = tmp_path / "back" / "tiny.encoder.pth", root / "results" / "pretrain" / "tiny" / "last.pth"
    assert encoder.stat().st_size < whole.stat().st_size / 2
    original, slim = backbone_from_checkpoint(whole), backbone_from_checkpoint(encoder)
    assert slim.spec == original.spec and slim.state_dict.keys() == original.state_dict.keys()
    assert all(torch.equal(slim.state_dict[key], value) for key, value in original.state_dict.items())


def test_a_failed_stage_stops_the_chain_and_wait_shows_its_error(tmp_path: Path) -> None:
    root = tmp_path / "gpu"
    root.mkdir()
    config = {"datasets": {"demo_indoor": {"source": {"kind": "builtin", "subset": "indoor"}}},
              "pretrain": {"tiny": {**TINY_RUN, "epochs": 1}}}  # fmt: skip
    (root / "config.yaml").write_text(yaml.safe_dump(config))  # set up without its raw data
    ran = script("chain", "tiny", "--root", str(root), "--device", "cpu")
    assert ran.returncode == 1
    status = json.loads((root / "chain.json").read_text())
    assert [stage["state"] for stage in status["stages"]][:2] == ["failed", "pending"]
    waited = script("wait", "--root", str(root), "--until-s", "1")
    assert waited.returncode == 1 and "preprocess demo_indoor failed" in waited.stdout
    assert "MANIFEST.json" in waited.stdout
