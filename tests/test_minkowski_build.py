"""The MinkowskiEngine build step (depthcontrast/minkowski_build): sdist check, patch set, cache key, cached rerun,
one-line failures. The compile itself runs in `python3 bootstrap.py test` before the tests (its time is printed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from depthcontrast.minkowski_build import build
from depthcontrast.minkowski_build.build import SDIST_NAME, BuildError, BuildKey, default_cache, obtain_sdist
from depthcontrast.minkowski_build.patches import CPU, CUDA, PatchError, apply_patches, patch_set_hash, patches_for


@pytest.fixture(scope="module")
def sdist() -> Path:
    """The real sdist: from the build cache that the test set-up filled (downloaded through pip when absent)."""
    return obtain_sdist(default_cache(), None)


def unpacked(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as archive:
        archive.extractall(dest, filter="data")
    return dest / "MinkowskiEngine-0.5.4"


def test_ci_has_minkowskiengine_installed_so_its_tests_run():
    if not os.environ.get("CI"):
        pytest.skip("outside CI, MinkowskiEngine is optional (python -m depthcontrast.minkowski_build --install)")
    assert build.installed_version() == build.VERSION


@pytest.mark.parametrize("flavour", [CPU, CUDA])
def test_every_patch_finds_its_target_in_the_real_sdist(sdist: Path, tmp_path: Path, flavour: str):
    root = unpacked(sdist, tmp_path)
    assert apply_patches(root, flavour) == len(patches_for(flavour))
    assert "from collections import Sequence" not in (root / "MinkowskiEngine/MinkowskiCommon.py").read_text()
    assert 'run_command("pip", "uninstall"' not in (root / "setup.py").read_text()
    prefetch = (root / "src/3rdparty/concurrent_unordered_map.cuh").read_text()
    assert ("cudaMemLocation" in prefetch) == (flavour == CUDA)


def test_a_changed_sdist_fails_loudly_naming_the_patch_and_the_file(sdist: Path, tmp_path: Path):
    root = unpacked(sdist, tmp_path)
    target = root / "src/coordinate_map_functors.cuh"
    target.write_text(target.read_text().replace("thrust::unary_function", "thrust::some_function"))
    with pytest.raises(PatchError) as error:
        apply_patches(root, CUDA)
    assert "find_coordinate without thrust::unary_function" in str(error.value)
    assert "src/coordinate_map_functors.cuh" in str(error.value) and "found 0" in str(error.value)


def test_the_cpu_set_is_a_subset_of_the_cuda_set_and_each_has_its_own_hash():
    cpu, cuda = patches_for(CPU), patches_for(CUDA)
    assert set(cpu) < set(cuda)
    assert patch_set_hash(CPU) != patch_set_hash(CUDA)
    with pytest.raises(ValueError, match="unknown MinkowskiEngine build flavour 'rocm'"):
        patches_for("rocm")


def test_the_cache_key_changes_with_each_input():
    base = BuildKey("s", "p", "2.13.0", "cpython-311", CPU, "", "-g0")
    for field in ("sdist_sha256", "patch_set", "torch", "python", "flavour", "arch_list", "cxxflags"):
        changed = BuildKey(**{**base.__dict__, field: "other"})
        assert changed.digest() != base.digest(), field


def test_a_cached_wheel_is_returned_in_seconds_without_building(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    key = BuildKey(
        build.SDIST_SHA256, patch_set_hash(CPU), build.torch_version(), sys.implementation.cache_tag, CPU, "", "-g0"
    )
    folder = tmp_path / "wheels" / key.digest()
    folder.mkdir(parents=True)
    (folder / "x.whl").write_bytes(b"wheel")
    (folder / "build.json").write_text(json.dumps({"wheel": "x.whl"}))
    monkeypatch.setattr(build, "compile_wheel", lambda *a, **k: pytest.fail("compiled although cached"))
    start = time.monotonic()
    assert build.build(CPU, tmp_path, cxxflags="-g0") == folder / "x.whl"
    print(f"cached lookup: {time.monotonic() - start:.3f} s")


def test_a_wrong_sdist_is_refused_by_sha256(tmp_path: Path):
    fake = tmp_path / SDIST_NAME
    fake.write_bytes(b"not the sdist")
    with pytest.raises(BuildError) as error:
        obtain_sdist(tmp_path / "cache", fake)
    message = str(error.value)
    assert "step 'sdist'" in message and str(fake) in message and "expected b1879c00" in message


def test_missing_tools_name_what_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(BuildError, match=r"step 'tools': no C\+\+ compiler: install g\+\+"):
        build.check_tools(CPU)
    monkeypatch.setattr(build, "BLAS_INCLUDE_DIRS", ("/nonexistent",))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.delenv("CPATH", raising=False)
    with pytest.raises(BuildError, match="libopenblas-dev"):
        build.check_tools(CPU)


def test_the_command_line_reports_a_failure_in_one_line(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "depthcontrast.minkowski_build", "--cache", str(tmp_path), "--sdist", "/nope.tar.gz"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    expected = "[minkowski-build] error: MinkowskiEngine build, step 'sdist': /nope.tar.gz: no such file"
    assert done.stderr.strip() == expected
