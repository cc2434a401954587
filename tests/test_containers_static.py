"""What cannot be built here, checked as text: the CUDA base pinned by a well-formed digest, the CUDA, torch,
spconv-cu126 and cumm-cu126 versions the same across Containerfiles, lock files, the image lock and the docs;
every requirement hash-locked; every rule's `container:` chosen by its run's stack."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from depthcontrast.containers.host import base_packages, locked_wheels
from depthcontrast.containers.images import IMAGES, ROOT, SOURCE_DATE_EPOCH, ContainerError, recipe_base
from depthcontrast.containers.workflow import RuleContainers, image_uri, load_settings, run_stack
from depthcontrast.minkowski_build.build import DEFAULT_ARCH_LIST

DOCKER = ROOT / "docker"
RECIPES = sorted(DOCKER.glob("*/Containerfile"))
CUDA_BASE = re.compile(r"^nvidia/cuda:(13\.0\.\d+)-devel-ubuntu24\.04@sha256:[0-9a-f]{64}$")
CUDA_PINS = {"torch": "2.11.0", "spconv-cu126": "2.3.8", "cumm-cu126": "0.7.11"}
CPU_PINS = {"torch": "2.13.0+cpu", "spconv": "2.3.8", "cumm": "0.7.11"}
DOC = (ROOT / "docs" / "CONTAINERS.md").read_text()


def test_both_gpu_recipes_start_from_the_same_cuda_13_devel_base_pinned_by_digest():
    bases = {recipe_base(IMAGES[name].recipe) for name in ("spconv-cuda", "minkowski-cuda")}
    assert len(bases) == 1
    (base,) = bases
    assert CUDA_BASE.match(base), base
    assert base in DOC


def test_no_recipe_names_a_tag_without_a_digest_or_latest():
    for recipe in RECIPES:
        text = recipe.read_text()
        assert "latest" not in text, recipe
        for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
            assert line in ("scratch", "${BASE}"), (recipe, line)
        for arg in re.findall(r"^ARG BASE=(\S+)", text, re.M):
            assert "@sha256:" in arg, (recipe, arg)


def test_every_recipe_dates_its_files_with_the_one_source_date_epoch():
    for name in ("spconv", "minkowski"):
        text = (DOCKER / name / "Containerfile").read_text()
        assert f"ARG SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}" in text
        assert "ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}" in text
    lock = json.loads((DOCKER / "images.lock.json").read_text())
    assert lock["source_date_epoch"] == SOURCE_DATE_EPOCH


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_every_requirement_of_every_image_is_pinned_with_hashes(name):
    spec = IMAGES[name]
    locked = locked_wheels(spec.lock)  # raises on a pin without --hash
    assert all(len(version) and hashes for version, hashes in locked.values())
    for line in spec.requirements.read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line)
        if pin:
            assert locked[pin.group(1).lower()][0] == pin.group(2), (spec.lock, line)
    assert "http" not in spec.lock.read_text()  # no index URL in a lock


@pytest.mark.parametrize("name", ["spconv-cuda", "minkowski-cuda"])
def test_gpu_locks_hold_torch_2_11_built_for_cuda_13_0(name):
    locked = locked_wheels(IMAGES[name].lock)
    assert locked["torch"][0] == CUDA_PINS["torch"]
    assert locked["cuda-toolkit"][0].startswith("13.0.")
    assert locked["nvidia-cuda-runtime"][0].startswith("13.0.")
    assert not any(package.endswith("-cu12") for package in locked)


@pytest.mark.parametrize("name", ["spconv-cuda", "minkowski-cuda"])
def test_gpu_locks_pair_spconv_cu126_2_3_8_with_cumm_cu126_0_7(name):
    # (the MinkowskiEngine image has spconv too: MinkUNet runs on either stack there, checkpoints convert)
    locked = locked_wheels(IMAGES[name].lock)
    assert locked["spconv-cu126"][0] == CUDA_PINS["spconv-cu126"]
    assert locked["cumm-cu126"][0] == CUDA_PINS["cumm-cu126"] and locked["cumm-cu126"][0].startswith("0.7.")
    assert "spconv" not in locked and "cumm" not in locked  # the CPU builds stay out of the GPU images


def test_cpu_locks_hold_the_versions_the_tests_run_with():
    constraints = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "envs" / "constraints.txt").read_text(), re.M))
    pinned = {re.sub(r"[-_.]+", "-", k).lower(): v for k, v in constraints.items()}
    for name in ("spconv-cpu", "minkowski-cpu"):
        locked = locked_wheels(IMAGES[name].lock)
        assert locked["torch"][0] == CPU_PINS["torch"]
        for package, (version, _) in locked.items():
            if package in pinned and package != "torch":
                assert version == pinned[package], (name, package, version, pinned[package])
        assert locked["spconv"][0] == CPU_PINS["spconv"] and locked["cumm"][0] == CPU_PINS["cumm"]


def test_the_docs_name_the_versions_the_files_pin():
    for text in ("CUDA 13.0", "torch 2.11.0", "spconv-cu126 2.3.8", "cumm-cu126 0.7.11", "torch 2.13.0+cpu"):
        assert text in DOC, text
    assert f"SOURCE_DATE_EPOCH={SOURCE_DATE_EPOCH}" in DOC or str(SOURCE_DATE_EPOCH) in DOC


def test_the_image_lock_names_each_gpu_image_with_its_recipes_base():
    lock = json.loads((DOCKER / "images.lock.json").read_text())
    for name in ("spconv-cuda", "minkowski-cuda"):
        entry = lock["images"][name]
        assert entry["base"] == recipe_base(IMAGES[name].recipe)
        assert entry["lock"] == str(IMAGES[name].lock.relative_to(ROOT))
        assert entry.get("image_id") is None or entry["image_id"].startswith("sha256:")


def test_the_minkowski_recipe_runs_the_repositorys_own_build_step_for_its_default_architectures():
    recipe = (DOCKER / "minkowski" / "Containerfile").read_text()
    steps = (DOCKER / "steps.sh").read_text()
    assert f'ARG TORCH_CUDA_ARCH_LIST="{DEFAULT_ARCH_LIST}"' in recipe
    assert "steps.sh minkowski" in recipe
    assert '-m depthcontrast.minkowski_build "--$FLAVOUR" --arch-list "$TORCH_CUDA_ARCH_LIST"' in steps


def test_the_steps_script_parses_and_installs_the_base_images_packages_on_the_cuda_base():
    subprocess.run(["sh", "-n", str(DOCKER / "steps.sh")], check=True)
    listed = re.search(r'packages="([^"]+)"', (DOCKER / "steps.sh").read_text()).group(1).split()
    assert listed == base_packages()


def test_every_rule_names_a_container():
    for path in sorted((ROOT / "rules").glob("*.smk")):
        text = path.read_text()
        rules = re.findall(r"^rule (\w+):", text, re.M)
        assert text.count("\n    container:\n") == len(rules), path


RUNS = {
    "pointnet": {"backbone": {"name": "pointnet2"}},
    "sparse_unet": {"voxel_backbone": {"name": "spconv_unet"}},
    "minkunet_spconv": {"voxel_backbone": {"name": "minkunet", "stack": "spconv"}},
    "minkunet_me": {"backbone": None, "voxel_backbone": {"name": "minkunet", "stack": "minkowski"}},
}


def test_the_pretrain_rule_takes_its_runs_stack_and_the_other_rules_the_cpu_image():
    assert {name: run_stack(run) for name, run in RUNS.items()} == {
        "pointnet": "spconv",
        "sparse_unet": "spconv",
        "minkunet_spconv": "spconv",
        "minkunet_me": "minkowski",
    }
    settings = {"pretrain_flavour": "cuda", "location": "sif", "sif_dir": "/images", "registry": None}
    rules = RuleContainers(settings, {"images": {}})
    assert rules.pretrain(RUNS["minkunet_me"]) == "/images/minkowski-cuda.sif"
    assert rules.pretrain(RUNS["pointnet"]) == "/images/spconv-cuda.sif"
    assert rules.cpu() == "/images/spconv-cpu.sif"


def test_a_registry_location_names_the_locked_digest():
    settings = {"pretrain_flavour": "cuda", "location": "registry", "sif_dir": "", "registry": "registry.test/team"}
    digest = "sha256:" + "a" * 64
    assert image_uri("spconv-cuda", settings, {"images": {"spconv-cuda": {"digest": digest}}}) == (
        f"docker://registry.test/team/depthcontrast-spconv@{digest}"
    )
    assert image_uri("minkowski-cuda", settings, {"images": {}}).endswith("/depthcontrast-minkowski:cuda-0.1.0")


def test_container_settings_errors_name_the_file_and_key(tmp_path: Path):
    assert load_settings()["location"] in ("sif", "registry")
    path = tmp_path / "containers.yaml"
    path.write_text("pretrain_flavour: tpu\n")
    with pytest.raises(ContainerError, match=r"containers.yaml: pretrain_flavour must be cpu or cuda"):
        load_settings(path)
    path.write_text("registy: x\n")
    with pytest.raises(ContainerError, match=r"containers.yaml: unknown key\(s\) registy"):
        load_settings(path)
