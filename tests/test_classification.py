"""Object classification on KiCad-style part models: VRML reading, surface sampling, variant groups, shards, and
the frozen global-feature linear classifier end to end, on hand-written .wrl fixtures in three fake families."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import lzma
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from depthcontrast.config import load_schema, validate_config
from depthcontrast.data.records import Sample
from depthcontrast.data.shard_dataset import ShardDataset
from depthcontrast.data.shard_writer import ShardWriter
from depthcontrast.data.sources import kicad
from depthcontrast.data.vrml import parse_vrml, read_vrml
from depthcontrast.errors import DataError
from depthcontrast.evaluate import run_evaluation
from depthcontrast.evaluate.classification import (
    OBJECTS,
    ClassificationTask,
    choose_classes,
    classification_scores,
    fit_linear,
    global_features,
    held_out_groups,
    linear_global,
    object_class,
    split_objects,
)
from depthcontrast.evaluate.tasks import load_samples
from depthcontrast.models.pointnet2 import PointNet2SSG
from depthcontrast.specs import parse_run
from depthcontrast.train import build_model
from tests.conftest import run_cli
from tests.test_evaluate import _save, _tiny_run

SETTINGS = {
    "seeds": [0, 1],
    "points": 256,
    "protocols": ["linear"],
    "linear": {"epochs": 1, "lr": 0.01, "batch_size": 8, "momentum": 0.9, "weight_decay": 0.0},
}
PREPROCESS = {"max_points": 512, "min_points": 256, "samples_per_shard": 8}


def _shape(vertices: np.ndarray, faces: list[list[int]], coord: str | None = None) -> str:
    """A VRML Shape with an IndexedFaceSet; `coord` replaces the Coordinate node (e.g. `USE name`)."""
    points = ", ".join(" ".join(f"{v:.4f}" for v in row) for row in vertices)
    index = ",".join(",".join(map(str, face)) + ",-1" for face in faces)
    coord = coord or f"Coordinate {{ point [{points}] }}"
    return (
        "Shape {\n  appearance Appearance { material DEF M Material { diffuseColor 0.8 0.8 0.8 } }\n"
        f"  geometry IndexedFaceSet {{ creaseAngle 0.5 coordIndex [{index}]\n    coord {coord} }}\n}}\n"
    )


def _box(size: tuple[float, float, float]) -> tuple[np.ndarray, list[list[int]]]:
    corners = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=float) * size
    quads = [[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]]
    return corners, quads


def _prism(sides: int, radius: float, height: float) -> tuple[np.ndarray, list[list[int]]]:
    angles = 2 * np.pi * np.arange(sides) / sides
    ring = np.stack([radius * np.cos(angles), radius * np.sin(angles), np.zeros(sides)], axis=1)
    vertices = np.concatenate([ring, ring + np.array([0, 0, height])])
    faces = [list(range(sides))[::-1], list(range(sides, 2 * sides))]
    faces += [[i, (i + 1) % sides, sides + (i + 1) % sides, sides + i] for i in range(sides)]
    return vertices, faces


def _pyramid(base: float, height: float) -> tuple[np.ndarray, list[list[int]]]:
    vertices = np.array([[0, 0, 0], [base, 0, 0], [base, base, 0], [0, base, 0], [base / 2, base / 2, height]])
    return vertices, [[3, 2, 1, 0], [0, 1, 4], [1, 2, 4], [2, 3, 4], [3, 0, 4]]


def _wrl(*shapes: str) -> str:
    return "#VRML V2.0 utf8\n# a test part\n" + "".join(shapes)


# three families in four libraries (two pitches of one), each with variants in two or more groups
FIXTURE_MODELS = {
    "Box_Test.3dshapes": {
        "C_0402_1005Metric": _box((1.0, 0.5, 0.5)), "C_0603_1608Metric": _box((1.6, 0.8, 0.8)),
        "C_0805_2012Metric": _box((2.0, 1.25, 1.0)), "CP_Elec_4x5.4": _box((4.0, 4.0, 5.4)),
        "CP_Elec_5x5.4": _box((5.0, 5.0, 5.4)), "CX_Rect_L3.0mm_W2.0mm": _box((3.0, 2.0, 0.6)),
    },
    "Round_Test.3dshapes": {
        "D_DO-35_P7.62mm": _prism(12, 1.0, 4.0), "D_DO-41_P10.16mm": _prism(12, 1.3, 5.0),
        "D_DO-201_P15.24mm": _prism(12, 2.6, 9.0), "LED_D3.0mm": _prism(16, 1.5, 5.0),
        "LED_D5.0mm": _prism(16, 2.5, 8.0), "LED_D8.0mm": _prism(16, 4.0, 11.0),
    },
    "Pointy_Test_2.54mm.3dshapes": {
        "Spike_1x01_P2.54mm": _pyramid(1.0, 3.0), "Spike_1x02_P2.54mm": _pyramid(1.2, 3.5),
        "Tower_2x2_P2.54mm": _pyramid(2.0, 2.0),
    },
    "Pointy_Test_1.27mm.3dshapes": {
        "Spike_1x01_P1.27mm": _pyramid(0.5, 1.5), "Tower_2x2_P1.27mm": _pyramid(1.0, 1.0),
        "Tower_3x3_P1.27mm": _pyramid(1.5, 1.1),
    },
}  # fmt: skip
FIXTURE_CLASSES = ["Box_Test", "Pointy_Test", "Round_Test"]


def write_library(root: Path) -> Path:
    """The fixture library under `root` (one model through a Transform, one through DEF/USE); returns root."""
    for library, models in FIXTURE_MODELS.items():
        (root / library).mkdir(parents=True, exist_ok=True)
        for name, (vertices, faces) in models.items():
            if name == "LED_D5.0mm":  # the same prism, placed by a Transform
                placed = _shape(vertices, faces)
                body = f"Transform {{ translation 10 0 0 rotation 0 0 1 1.5708 children [ {placed} ] }}"
            elif name == "CP_Elec_5x5.4":  # a Coordinate shared by DEF/USE between two shapes
                points = ", ".join(" ".join(f"{v:.4f}" for v in row) for row in vertices)
                first = _shape(vertices, faces[:3], coord=f"DEF C1 Coordinate {{ point [{points}] }}")
                body = first + _shape(vertices, faces[3:], coord="USE C1")
            else:
                body = _shape(vertices, faces)
            (root / library / f"{name}.wrl").write_text(_wrl(body))
    return root


def _config(path: Path, source: dict) -> Path:
    config = {"datasets": {"parts": {"source": {"kind": "kicad", **source}, "preprocess": PREPROCESS}}}
    path.write_text(yaml.safe_dump(config))
    return path


def _stages(config: Path, results: Path) -> None:
    for stage in ("download", "preprocess"):
        done = run_cli(stage, "--config", str(config), "--dataset", "parts", "--results", str(results))
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """results/shards/parts: the fixture library downloaded (used in place) and preprocessed."""
    base = tmp_path_factory.mktemp("kicad")
    library = write_library(base / "3dmodels")
    _stages(_config(base / "config.yaml", {"root": str(library)}), base / "results")
    return base / "results" / "shards" / "parts"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = _tiny_run()
    torch.manual_seed(4321)  # not an evaluation seed: the "pretrained" weights differ from every scratch init
    return _save(tmp_path_factory.mktemp("ckpt") / "last.pth", build_model(parse_run(run)).state_dict(), run)


# --- VRML -------------------------------------------------------------------------------------------------------


def test_vrml_quads_become_two_triangles_each_with_the_box_area():
    vertices, faces = _box((2.0, 3.0, 4.0))
    triangles = parse_vrml(_wrl(_shape(vertices, faces)), "box.wrl")
    assert triangles.shape == (12, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]), axis=1)
    assert areas.sum() == pytest.approx(2 * (2 * 3 + 3 * 4 + 2 * 4))


def test_vrml_transform_rotates_then_translates_and_use_repeats_the_def():
    vertices, faces = _box((1.0, 2.0, 3.0))
    moved = f"Transform {{ translation 10 0 0 rotation 0 0 1 1.5707963 children [ {_shape(vertices, faces)} ] }}"
    triangles = parse_vrml(_wrl(moved), "moved.wrl").reshape(-1, 3)
    # a quarter turn about z maps (x, y) to (-y, x): the box spans x in [10 - 2, 10], y in [0, 1]
    np.testing.assert_allclose(triangles.min(axis=0), [8, 0, 0], atol=1e-6)
    np.testing.assert_allclose(triangles.max(axis=0), [10, 1, 3], atol=1e-6)
    points = ", ".join(" ".join(map(str, row)) for row in vertices)
    shared = _shape(vertices, faces, coord=f"DEF C Coordinate {{ point [{points}] }}") + _shape(
        vertices, faces, coord="USE C"
    )
    assert parse_vrml(_wrl(shared), "shared.wrl").shape == (24, 3, 3)


def test_vrml_nested_groups_scale_and_line_sets_are_read_or_skipped():
    vertices, faces = _box((1.0, 1.0, 1.0))
    text = _wrl(
        "Group { children [ Transform { scale 2 2 2 children [ Group { children [ "
        + _shape(vertices, faces)
        + " ] } ] } ] }\nShape { geometry IndexedLineSet { coord Coordinate { point [0 0 0, 1 1 1] } "
        "coordIndex [0, 1, -1] } }\n"
    )
    triangles = parse_vrml(text, "nested.wrl")
    assert triangles.shape == (12, 3, 3)
    assert triangles.max() == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("#VRML V1.0 ascii\nSeparator { }", "not a VRML 2.0 file"),
        (_wrl("Shape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0, 1 0 0"), "no closing ]"),
        (_wrl("Shape { geometry IndexedFaceSet { coordIndex [0, 1, 2, -1] coord USE Nowhere } }"), "USE 'Nowhere'"),
        (_wrl("Shape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0] } coordIndex [0, 1, 5, -1] } }"),
         "coordIndex refers to vertex 5"),
        (_wrl("PROTO Part [ ] { }"), "PROTO is not supported"),
        (_wrl("Shape { geometry IndexedFaceSet { coord Coordinate { point [0 0 0, 1 x 0] } } }"), "not a number"),
    ],
)  # fmt: skip
def test_a_malformed_vrml_file_is_a_one_line_error_naming_the_file(tmp_path: Path, text: str, problem: str):
    path = tmp_path / "Broken.3dshapes" / "broken.wrl"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(DataError) as error:
        read_vrml(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message


# --- sampling and names -----------------------------------------------------------------------------------------


def test_surface_points_fall_on_triangles_in_proportion_to_their_area():
    small = [[0, 0, 0], [1, 0, 0], [0, 1, 0]]  # area 0.5 in the plane z = 0
    large = [[0, 0, 5], [3, 0, 5], [0, 1, 5]]  # area 1.5 in the plane z = 5
    triangles = np.array([small, large], dtype=float)
    points = kicad.sample_surface(triangles, 20000, np.random.default_rng(0))
    on_large = np.isclose(points[:, 2], 5)
    assert (on_large | np.isclose(points[:, 2], 0)).all()
    # 3 sigma of a binomial(20000, 0.75) share is 0.009
    assert on_large.mean() == pytest.approx(0.75, abs=0.01)
    # uniform inside a triangle: the mean is its centroid, and every point is inside (x/3 + y <= 1 for the large one)
    np.testing.assert_allclose(points[on_large].mean(axis=0), np.mean(large, axis=0), atol=0.03)
    assert (points[on_large, 0] / 3 + points[on_large, 1] <= 1 + 1e-9).all() and (points[:, :2] >= -1e-12).all()
    with pytest.raises(DataError, match="no area"):
        kicad.sample_surface(np.zeros((2, 3, 3)), 10, np.random.default_rng(0))


def test_normalised_objects_are_centred_on_their_box_and_inside_the_unit_sphere():
    vertices, faces = _box((2.0, 4.0, 6.0))
    triangles = parse_vrml(_wrl(_shape(vertices + 100.0, faces)), "box.wrl")
    points, radius = kicad.normalise(kicad.sample_surface(triangles, 4000, np.random.default_rng(1)), triangles)
    assert radius == pytest.approx(np.sqrt(1 + 4 + 9))
    assert np.linalg.norm(points, axis=1).max() <= 1 + 1e-6
    np.testing.assert_allclose((points.min(axis=0) + points.max(axis=0)) / 2, 0, atol=0.02)


@pytest.mark.parametrize(
    ("model", "group"),
    [
        ("C_0805_2012Metric", "C"), ("C_0402_1005Metric.wrl", "C"),
        ("CP_Radial_D10.0mm_P5.00mm", "CP_Radial"), ("CP_Radial_D40.0mm_P10.00mm_SnapIn", "CP_Radial"),
        ("QFN-32-1EP_5x5mm_P0.5mm_EP3.45x3.45mm", "QFN"), ("JST_XH_B4B-XH-A_1x04_P2.50mm_Vertical", "JST_XH"),
        ("JST_XH_S9B-XH-A-1_1x09_P2.50mm_Horizontal", "JST_XH"), ("PinHeader_2x05_P2.54mm_Vertical", "PinHeader"),
        ("2N7000_TO-92", "#N#_TO-#"),
    ],
)  # fmt: skip
def test_variant_group_strips_sizes_pitches_and_pin_counts(model: str, group: str):
    assert kicad.variant_group(model) == group


def test_a_class_is_its_library_with_the_pitch_removed():
    assert kicad.model_class("Connector_PinHeader_2.54mm.3dshapes") == "Connector_PinHeader"
    assert kicad.model_class("Connector_PinSocket_1.00mm") == "Connector_PinSocket"
    assert kicad.model_class("Capacitor_SMD.3dshapes") == "Capacitor_SMD"
    assert object_class("parts/Pointy_Test_1.27mm/Tower_2x2_P1.27mm") == "Pointy_Test"


def test_the_schema_defaults_are_the_package_the_code_knows():
    source = load_schema()["$defs"]["source"]["allOf"]
    kicad_source = next(entry for entry in source if entry["if"]["properties"]["kind"].get("const") == "kicad")
    properties = kicad_source["then"]["properties"]
    assert (properties["version"]["default"], properties["sha256"]["default"]) == (kicad.VERSION, kicad.DEB_SHA256)


# --- shards, manifest, split --------------------------------------------------------------------------------


def test_shards_hold_one_labelled_object_per_model_and_the_manifest_every_file(shards: Path):
    manifest = json.loads((shards.parents[1] / "raw" / "parts" / "MANIFEST.json").read_text())
    library = Path(manifest["root"])
    assert manifest["source_kind"] == "kicad" and manifest["extra"]["licence"].startswith("CC-BY-SA-4.0")
    assert len(manifest["files"]) == sum(len(models) for models in FIXTURE_MODELS.values())
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256((library / entry["path"]).read_bytes()).hexdigest()
    objects = json.loads((shards / "objects.json").read_text())
    assert objects["classes"] == FIXTURE_CLASSES
    dataset = ShardDataset(shards)
    try:
        assert dataset.index.params["kicad"]["classes"] == FIXTURE_CLASSES
        for i in range(len(dataset)):
            item = dataset[i]
            record = objects["objects"][i]
            assert item["sample_id"] == record["sample_id"] and len(item["points"]) == PREPROCESS["max_points"]
            assert (item["labels"] == FIXTURE_CLASSES.index(record["class"])).all()
            assert np.linalg.norm(item["points"], axis=1).max() <= 1 + 1e-5
    finally:
        dataset.close()
    led = next(r for r in objects["objects"] if r["sample_id"].endswith("/LED_D5.0mm"))
    assert led["group"] == "LED" and led["radius_mm"] == pytest.approx(np.hypot(2.5, 4.0) * kicad.VRML_UNIT_MM, 1e-3)


def test_preprocessing_again_gives_byte_identical_shards_and_quarantines_a_broken_model(shards: Path, tmp_path: Path):
    library = write_library(tmp_path / "3dmodels")
    (library / "Box_Test.3dshapes" / "Broken_1x1.wrl").write_text(_wrl("Shape { geometry IndexedFaceSet { coord"))
    _stages(_config(tmp_path / "config.yaml", {"root": str(library)}), tmp_path / "results")
    again = tmp_path / "results" / "shards" / "parts"
    quarantine = json.loads((again / "quarantine.json").read_text())
    assert [(e["source"], e["reason"]) for e in quarantine["entries"]] == [("Box_Test.3dshapes/Broken_1x1.wrl",
                                                                            "unreadable")]  # fmt: skip
    assert str(library / "Box_Test.3dshapes" / "Broken_1x1.wrl") in quarantine["entries"][0]["detail"]
    for shard in sorted(shards.glob("shard-*.h5")):
        assert hashlib.sha256(shard.read_bytes()).digest() == hashlib.sha256((again / shard.name).read_bytes()).digest()
    assert (shards / "objects.json").read_bytes() == (again / "objects.json").read_bytes()


def _deb(path: Path, members: dict[str, bytes]) -> Path:
    """A minimal Debian package: an ar archive whose data.tar.xz holds `members`."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as archive:
        for name, data in sorted(members.items()):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    entries = {"debian-binary": b"2.0\n", "control.tar.xz": lzma.compress(b""), "data.tar.xz": lzma.compress(
        tar_bytes.getvalue())}  # fmt: skip
    out = b"!<arch>\n"
    for name, data in entries.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
    path.write_bytes(out)
    return path


def test_a_deb_is_checked_and_its_vrml_models_extracted(tmp_path: Path):
    library = write_library(tmp_path / "lib")
    members = {f"usr/share/kicad/3dmodels/{p.relative_to(library)}": p.read_bytes() for p in library.rglob("*.wrl")}
    members["usr/share/doc/kicad-packages3d/copyright"] = b"CC-BY-SA-4.0"
    deb = _deb(tmp_path / "kicad-packages3d_test_all.deb", members)
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    results = tmp_path / "results"
    done = run_cli("download", "--config", str(_config(tmp_path / "c.yaml", {"deb": str(deb), "sha256": digest})),
                   "--dataset", "parts", "--results", str(results))  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = json.loads((results / "raw" / "parts" / "MANIFEST.json").read_text())
    assert manifest["extra"]["deb_sha256"] == digest and manifest["extra"]["from"] == "deb"
    assert len(manifest["files"]) == len(members) - 1
    assert all(entry["path"].startswith("models/") for entry in manifest["files"])
    wrong = run_cli("download", "--config", str(_config(tmp_path / "w.yaml", {"deb": str(deb), "sha256": "0" * 64})),
                    "--dataset", "parts", "--results", str(tmp_path / "other"))  # fmt: skip
    assert wrong.returncode != 0 and f"{deb}: sha256 {digest} differs" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def _task(**overrides) -> ClassificationTask:
    config = validate_config({
        "datasets": {"parts": {"source": {"kind": "kicad"}}},
        "evaluate": {"tasks": {"cls": {"dataset": "parts", "kind": "object_classification", "min_models": 2,
                                       "test_fraction": 0.4, **overrides}}},
    })  # fmt: skip
    return ClassificationTask.from_block(config["evaluate"]["tasks"]["cls"])


@pytest.mark.parametrize("split_seed", [0, 1, 2, 3])
def test_split_puts_every_variant_group_on_one_side_and_every_class_on_both(shards: Path, split_seed: int):
    samples = load_samples(shards, OBJECTS)
    task = _task(split_seed=split_seed)
    classes = choose_classes(samples, task, "test")
    assert classes == FIXTURE_CLASSES
    split = split_objects(samples, classes, task)
    assert not set(split.train.groups) & set(split.test.groups)
    assert len(split.train) + len(split.test) == len(samples)
    for name in classes:
        test_models = sum(object_class(i) == name for i in split.test.sample_ids)
        assert test_models and any(object_class(i) == name for i in split.train.sample_ids)
        smallest = min(Counter(g for g in samples.groups if g.startswith(f"{name}/")).values())
        assert test_models <= max(task.test_fraction * 6, smallest)  # every fixture class has 6 models
    # the groups re-derived from the model names by the documented rule, independently of the split's own labels
    by_rule = {i: f"{object_class(i)}/{i.rsplit('/', 1)[1].split('_')[0]}" for i in samples.sample_ids}
    assert not {by_rule[i] for i in split.train.sample_ids} & {by_rule[i] for i in split.test.sample_ids}


def test_held_out_groups_fit_the_test_share_and_pass_over_a_group_that_overshoots():
    sizes = {"big": 80, "a": 10, "b": 6, "c": 4}
    for seed in range(20):
        held = held_out_groups(sizes, 30, np.random.default_rng(seed))
        assert "big" not in held and 10 <= sum(sizes[g] for g in held) <= 30
    assert held_out_groups({"big": 80, "small": 40}, 30, np.random.default_rng(0)) == {"small"}
    assert held_out_groups({"only": 5}, 2, np.random.default_rng(0)) == set()


def test_classes_below_min_models_or_unknown_are_left_out_or_refused(shards: Path):
    samples = load_samples(shards, OBJECTS)
    assert choose_classes(samples, _task(min_models=6), "test") == FIXTURE_CLASSES  # Pointy_Test: 3 + 3 models
    with pytest.raises(DataError, match="0 classes have 7"):
        choose_classes(samples, _task(min_models=7), "test")
    with pytest.raises(DataError, match=r"classes \['Nope'\] not in the data"):
        choose_classes(samples, _task(classes=["Box_Test", "Nope"]), "test")


def test_the_linear_classifier_separates_separable_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    x = torch.from_numpy(rng.normal(size=(60, 5)) + 4 * np.eye(3, 5)[y])
    classifier = fit_linear(x, torch.from_numpy(y), 3, l2=1e-3, iterations=100)
    assert (classifier(x).argmax(dim=1).numpy() == y).all()
    again = fit_linear(x, torch.from_numpy(y), 3, l2=1e-3, iterations=100)
    assert torch.equal(classifier.weight, again.weight)  # convex, from zero weights: no seed in the fit


def test_mean_class_accuracy_weighs_each_class_equally():
    confusion = np.array([[8, 2, 0], [0, 1, 1], [0, 0, 0]])
    scores = classification_scores(confusion, ["a", "b", "c"])
    assert scores["accuracy"] == pytest.approx(9 / 12)
    assert scores["mean_class_accuracy"] == pytest.approx((0.8 + 0.5) / 2)
    assert scores["per_class_accuracy"] == {"a": 0.8, "b": 0.5, "c": None}


def test_global_features_are_the_max_of_the_fp2_features():
    torch.manual_seed(0)
    backbone = PointNet2SSG(npoints=(32, 16, 8, 4))
    xyz = np.random.default_rng(0).normal(size=(3, 64, 3)).astype(np.float32)
    pooled = global_features(backbone, xyz, 2, torch.device("cpu"))
    with torch.no_grad():
        expected = backbone(torch.from_numpy(xyz))["fp2_features"].amax(dim=2)
    torch.testing.assert_close(pooled, expected)


def test_classification_metrics_hold_both_scores_per_seed_with_mean_std_and_the_noise_flag(
    shards: Path, checkpoint: Path, tmp_path: Path
):
    task = {"dataset": "parts", "kind": "object_classification", "min_models": 2, "test_fraction": 0.4,
            "iterations": 50}  # fmt: skip
    datasets = {"parts": {"source": {"kind": "kicad"}}}
    block = validate_config({"datasets": datasets, "evaluate": {"tasks": {"cls": task}}})
    returned = run_evaluation("cls", block["evaluate"]["tasks"]["cls"], SETTINGS, shards, checkpoint, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(returned))
    assert written["kind"] == "object_classification" and written["classes"] == FIXTURE_CLASSES
    assert not set(written["split"]["train_groups"]) & set(written["split"]["test_groups"])
    result = written["results"]["linear_global"]
    for init in ("pretrained", "scratch"):
        assert set(result[init]["per_seed"]) == {"0", "1"}
        for metric in ("accuracy", "mean_class_accuracy"):
            values = [run[metric] for run in result[init]["per_seed"].values()]
            assert all(0.0 <= v <= 1.0 for v in values)
            assert result[init][metric]["mean"] == pytest.approx(np.mean(values))
            assert result[init][metric]["std"] == pytest.approx(np.std(values, ddof=1))
        confusion = np.array(result[init]["per_seed"]["0"]["confusion"])
        assert confusion.sum() == len(written["split"]["test_samples"])
    diff = result["pretrained_minus_scratch"]["mean_class_accuracy"]
    expected = result["pretrained"]["mean_class_accuracy"]["mean"] - result["scratch"]["mean_class_accuracy"]["mean"]
    assert diff["difference"] == pytest.approx(expected) and diff["within_noise"] == (abs(expected) <= diff["noise"])


def test_object_classification_on_shards_of_another_source_is_refused(checkpoint: Path, tmp_path: Path):
    writer = ShardWriter(tmp_path / "scans", dataset="scans", source="local", params={}, samples_per_shard=4,
                         compression="none", compression_level=0, xyz_quantum_m=None)  # fmt: skip
    with writer:
        points = np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32)
        writer.add(Sample("scans/room/0", points, labels=np.zeros(300, dtype=np.int32)))
    task = _task().__dict__ | {"kind": "object_classification", "classes": None}
    with pytest.raises(DataError, match="shards of source kind 'local'"):
        run_evaluation("cls", task, SETTINGS, tmp_path / "scans", checkpoint, tmp_path / "out")


def test_apt_get_download_fetches_into_the_cache_and_a_wrong_hash_leaves_nothing(tmp_path: Path, monkeypatch):
    deb = _deb(tmp_path / "built.deb", {"usr/share/kicad/3dmodels/Box_Test.3dshapes/C_0402.wrl": b"#VRML V2.0 utf8\n"})
    fake = tmp_path / "bin" / "apt-get"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\ncp "{deb}" "./kicad-packages3d_9.9_all.deb"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    fetched = kicad.fetch_deb(tmp_path / "cache", "9.9", digest)
    assert fetched == tmp_path / "cache" / "kicad-packages3d_9.9_all.deb" and fetched.read_bytes() == deb.read_bytes()
    command = ["-o", "DPkg::Lock::Timeout=300", "download", "kicad-packages3d=9.9"]
    assert (tmp_path / "args").read_text().split() == command
    with pytest.raises(DataError, match="of the fetched package differs from the expected"):
        kicad.fetch_deb(tmp_path / "other", "9.9", "0" * 64)
    assert not list((tmp_path / "other").rglob("*.deb"))


def test_the_protocol_reads_batchnorm_statistics_of_the_training_clouds_not_the_loaded_ones():
    torch.manual_seed(0)
    backbone = PointNet2SSG(npoints=(32, 16, 8, 4))
    skewed = copy.deepcopy(backbone)
    for module in skewed.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-5, 5)
            module.running_var.uniform_(0.1, 10)
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(12, 64, 3)).astype(np.float32)
    y = np.arange(12) % 3
    task = _task(iterations=20)
    confusions = [
        linear_global(b, xyz[:8], y[:8], xyz[8:], y[8:], 3, task, torch.device("cpu")) for b in (backbone, skewed)
    ]
    np.testing.assert_array_equal(*confusions)
    for a, b in zip(backbone.modules(), skewed.modules(), strict=True):
        if isinstance(a, torch.nn.modules.batchnorm._BatchNorm):
            torch.testing.assert_close(a.running_mean, b.running_mean)
