"""Real builds of both CPU flavours with podman (slow; `-m container`): two --no-cache builds of each give the
same image ID, the smoke test trains one step inside each image, and the demo's pretrain rule (with the rules
before it) runs inside the CPU image chosen by its `container:` directive, matching a local run of the same job.

The MinkowskiEngine image takes its wheel from the host cache ($DEPTHCONTRAST_CACHE/minkowski, which
`python3 bootstrap.py test` fills); without it the build compiles MinkowskiEngine (~10 min on 2 cores).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from depthcontrast.containers.engine import write_sandbox_conf
from depthcontrast.containers.images import IMAGES, ROOT
from depthcontrast.io_utils import sha256_file
from tests.conftest import BIN, copy_repo

pytestmark = [pytest.mark.slow, pytest.mark.container]
CPU_IMAGES = ("spconv-cpu", "minkowski-cpu")
TOOLS = ("podman", "mmdebstrap")
APT_PACKAGES = ["podman", "buildah", "mmdebstrap", "skopeo", "umoci", "runc"]
SHIM = Path(__file__).with_name("podman_apptainer.py")


def tools_ready() -> bool:
    """podman and mmdebstrap, apt-installed here when missing (root with apt-get only)."""
    if all(shutil.which(tool) for tool in TOOLS):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        apt = ["apt-get", "-o", "DPkg::Lock::Timeout=300"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([*apt, "update", "-qq"], env=env, check=False)
        subprocess.run([*apt, "install", "-y", "-qq", *APT_PACKAGES], env=env, check=False)
    return all(shutil.which(tool) for tool in TOOLS)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Environment and image lock for the container CLI (a containers.conf for podman in a sandbox)."""
    if not tools_ready():
        pytest.skip("podman and mmdebstrap are missing and cannot be installed here (needs root and apt-get)")
    folder = tmp_path_factory.mktemp("containers")
    env = {**os.environ}
    env.setdefault("CONTAINERS_CONF", str(write_sandbox_conf(folder / "containers.conf")))
    return {"env": env, "lock": folder / "images.lock.json", "times": {}}


def containers(engine: dict, *args: str, timeout: float = 3000) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "depthcontrast.containers", "--lock-file", str(engine["lock"]), *args]
    result = subprocess.run(command, cwd=ROOT, env=engine["env"], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-60:])
        raise AssertionError(f"containers {' '.join(args)} exited {result.returncode}:\n{tail}")
    return result


def report(capsys: pytest.CaptureFixture, line: str) -> None:
    """A timing line on the terminal, also when pytest captures output (CI's split)."""
    with capsys.disabled():
        print(f"\n[containers test] {line}", flush=True)


@pytest.fixture(scope="module")
def builds(engine: dict) -> dict[str, list[tuple[str, float]]]:
    """Each CPU flavour built twice with --no-cache: [(image ID, seconds), (image ID, seconds)]. The two flavours
    build side by side (one pip install each keeps a core busy); the second round reuses the host's wheels."""
    start = time.monotonic()
    containers(engine, "base")
    engine["times"]["base"] = time.monotonic() - start

    def build(name: str) -> tuple[str, float]:
        begin = time.monotonic()
        result = containers(engine, "build", "--no-cache", name)
        image_id = re.findall(rf"^\[containers\] {name}: (sha256:[0-9a-f]{{64}})", result.stdout, re.M)[-1]
        return image_id, time.monotonic() - begin

    done: dict[str, list[tuple[str, float]]] = {name: [] for name in CPU_IMAGES}
    with ThreadPoolExecutor(max_workers=len(CPU_IMAGES)) as pool:
        for _ in range(2):
            for name, result in zip(CPU_IMAGES, pool.map(build, CPU_IMAGES), strict=True):
                done[name].append(result)
    return done


def test_two_no_cache_builds_of_each_cpu_flavour_give_the_same_image_id(builds, engine, capsys):
    split = ", ".join(f"{name} {a[1]:.0f} s + {b[1]:.0f} s" for name, (a, b) in builds.items())
    report(capsys, f"base {engine['times']['base']:.0f} s; no-cache builds (two flavours at a time): {split}")
    for name, ((first, _), (second, _)) in builds.items():
        assert first.startswith("sha256:") and len(first) == 71
        assert first == second, f"{name}: two --no-cache builds gave {first} and {second}"


def test_the_image_lock_records_each_build_with_its_requirements_lock(builds, engine):
    lock = json.loads(engine["lock"].read_text())
    assert lock["base"]["image_id"].startswith("sha256:") and len(lock["base"]["rootfs_sha256"]) == 64
    assert {"python3", "g++", "libopenblas-dev"} <= set(lock["base"]["packages"])
    for name in CPU_IMAGES:
        entry = lock["images"][name]
        assert entry["image_id"] == builds[name][1][0]
        assert entry["digest"].startswith("sha256:") and entry["engine"].startswith("podman version")
        assert entry["base"] == lock["base"]["image_id"]
        assert entry["lock_sha256"] == sha256_file(IMAGES[name].lock)


def test_the_smoke_test_trains_one_step_inside_each_cpu_image(builds, engine, capsys):
    for name in CPU_IMAGES:
        start = time.monotonic()
        result = containers(engine, "smoke", "--device", "cpu", name)
        report(capsys, f"smoke {name}: {time.monotonic() - start:.0f} s")
        stack = IMAGES[name].stack
        assert f"[smoke] {stack} on cpu:" in result.stdout and "[smoke] ok" in result.stdout, result.stdout


def losses(metrics: Path) -> list[float]:
    with metrics.open() as stream:
        return [float(row["loss"]) for row in csv.DictReader(stream)]


def test_the_demo_pretrain_rule_runs_inside_the_cpu_image_and_matches_a_local_run(builds, engine, tmp_path, capsys):
    repo = copy_repo(tmp_path / "repo")
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["pretrain"]["demo_pointnet"]["epochs"] = 1
    (repo / "config.yaml").write_text(yaml.safe_dump(config))
    # the rules' images as "SIF" stand-ins naming the podman images just built (tests/podman_apptainer.py)
    sif_dir = tmp_path / "sif"
    sif_dir.mkdir()
    lock = json.loads(engine["lock"].read_text())
    for name in CPU_IMAGES:
        (sif_dir / f"{name}.sif").write_text(f"podman-image: {lock['images'][name]['image_id']}\n")
    settings = tmp_path / "containers.yaml"
    settings.write_text(yaml.safe_dump({"pretrain_flavour": "cpu", "location": "sif", "sif_dir": str(sif_dir)}))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "apptainer").write_text(f'#!/bin/sh\nexec {sys.executable} {SHIM} "$@"\n')
    (shim / "apptainer").chmod(0o755)
    calls = tmp_path / "podman-calls.log"
    (shim / "podman").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {shutil.which("podman")} "$@"\n')
    (shim / "podman").chmod(0o755)
    env = {**engine["env"], "DEPTHCONTRAST_CONTAINERS": str(settings), "PATH": f"{shim}:{BIN}:{os.environ['PATH']}"}
    target = "results/pretrain/demo_pointnet/last.pth"
    command = [str(BIN / "snakemake"), target, "--cores", "2", "--sdm", "apptainer"]  # (--sdm takes a list)
    start = time.monotonic()
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-6000:]
    report(capsys, f"demo DAG to {target} inside the CPU image: {time.monotonic() - start:.0f} s")
    runs = calls.read_text().splitlines()
    spconv_id = lock["images"]["spconv-cpu"]["image_id"]
    pretrain = [line for line in runs if " pretrain demo_pointnet " in line and spconv_id in line]
    assert len(pretrain) == 1, runs
    assert any(" preprocess --dataset demo_lidar " in line for line in runs), runs

    # the same pretraining job in the local environment, on the shards the container wrote, same arguments
    arguments = pretrain[0].split(" pretrain ", 1)[1]  # run, --settings, --shards, --out, ... (relative paths)
    local = tmp_path / "local"
    cli = [str(BIN / "depthcontrast"), "pretrain", *shlex.split(arguments.replace(" --resume", ""))]
    cli[cli.index("--out") + 1] = str(local)
    start = time.monotonic()
    # the container's environment has no OMP_NUM_THREADS (tests/conftest.py sets 1 here): the threads must agree
    local_env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    subprocess.run(cli, cwd=repo, env=local_env, check=True, capture_output=True, text=True, timeout=1800)
    report(capsys, f"the same pretraining locally: {time.monotonic() - start:.0f} s")
    inside, outside = losses(repo / "results/pretrain/demo_pointnet/metrics.csv"), losses(local / "metrics.csv")
    assert len(inside) == len(outside) > 0
    assert inside == pytest.approx(outside, rel=1e-6), (inside, outside)  # same wheels, same threads: equal
