"""External finetune jobs: templated commands run in the user's checkout on exported weights."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from depthcontrast.config import validate_config
from depthcontrast.errors import ConfigError, DataError
from depthcontrast.external import render_command, run_external


def job(workdir: Path, command: str) -> dict:
    return {"run": "r", "target": "votenet", "workdir": str(workdir), "command": command, "enabled": True}


def test_placeholders_are_filled_and_shell_quoted(tmp_path: Path):
    command = render_command("train --w {weights} --o {out} --r {run}", tmp_path / "my w.pth", tmp_path, "demo")
    assert command == f"train --w '{tmp_path}/my w.pth' --o {tmp_path} --r demo"


def test_an_unknown_placeholder_is_a_clear_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"bad placeholder 'checkpoint' \(allowed: \{weights\}, \{out\}, \{run\}\)"):
        render_command("train {checkpoint}", tmp_path / "w.pth", tmp_path, "demo")


def test_the_command_runs_in_the_workdir_and_records_what_ran(tmp_path: Path):
    weights = tmp_path / "votenet.pth"
    weights.write_bytes(b"weights")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    script = "import os, sys; open(os.path.join(sys.argv[2], 'seen'), 'w').write(os.getcwd() + ' ' + sys.argv[1])"
    command = f"{sys.executable} -c {script!r} {{weights}} {{out}}"
    record = run_external("votenet_scannet", job(checkout, command), weights, tmp_path / "out")
    assert (tmp_path / "out" / "seen").read_text() == f"{checkout} {weights}"
    assert json.loads((tmp_path / "out" / "done.json").read_text()) == record
    assert record["exit_status"] == 0


def test_a_failing_command_or_missing_checkout_is_an_error_without_done_file(tmp_path: Path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"w")
    with pytest.raises(DataError, match="exited with status 3"):
        run_external("j", job(tmp_path, f"{sys.executable} -c 'raise SystemExit(3)'"), weights, tmp_path / "out")
    with pytest.raises(DataError, match="workdir does not exist"):
        run_external("j", job(tmp_path / "nope", "true"), weights, tmp_path / "out")
    assert not (tmp_path / "out" / "done.json").exists()


def test_jobs_must_name_a_run_and_one_of_its_export_targets():
    base = {
        "datasets": {"d": {"source": {"kind": "builtin", "subset": "indoor"}}},
        "pretrain": {"r": {"datasets": ["d"], "export_targets": ["plain"]}},
    }
    with pytest.raises(ConfigError, match=r"external\.j\.target: .votenet. is not in pretrain\.r\.export_targets"):
        validate_config({**base, "external": {"j": job(Path("/x"), "true")}})
    with pytest.raises(ConfigError, match=r"external\.j\.run: .other. is not a pretraining run"):
        validate_config({**base, "external": {"j": {**job(Path("/x"), "true"), "run": "other"}}})
