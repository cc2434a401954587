"""Our depth-PNG frame folders (the built-in indoor data uses them).

```
<root>/classes.json          optional {"0": "no_return", "1": "floor", ...}
<scene>/camera.json          {"width", "height", "fx", "fy", "cx", "cy", "depth_scale", "poses": {...}}
<scene>/depth/<frame>.png    uint16, 0 = no return
<scene>/label/<frame>.png    optional uint8/uint16 class id per pixel
<scene>/color/<frame>.png    optional 8-bit RGB
```
One unit per depth frame; points are in the camera frame (poses are kept in camera.json only).
"""

from __future__ import annotations

import json
from pathlib import Path

from depthcontrast.data.depth_images import DEFAULT_DEPTH_SCALE, Intrinsics, depth_to_sample, read_image
from depthcontrast.data.formats.base import Unit
from depthcontrast.data.records import Sample
from depthcontrast.errors import SampleError

CAMERA_FILE = "camera.json"
CLASSES_FILE = "classes.json"
DEPTH_DIR = "depth"
COLOR_DIR = "color"
LABEL_DIR = "label"
INTRINSIC_KEYS = ("fx", "fy", "cx", "cy")


def read_camera(path: Path) -> tuple[Intrinsics, tuple[int, int], float | None]:
    """Intrinsics, (height, width) and depth_scale (None when absent) from a camera.json."""
    try:
        camera = json.loads(Path(path).read_text())
        intrinsics = Intrinsics(*(float(camera[key]) for key in INTRINSIC_KEYS))
        shape = (int(camera["height"]), int(camera["width"]))
        scale = camera.get("depth_scale")
        return intrinsics, shape, None if scale is None else float(scale)
    except OSError as exc:
        raise SampleError("unreadable", f"{path}: cannot open ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SampleError("unreadable", f"{path}: not a valid camera.json ({exc!r})") from None


def decode_depth_png(unit: Unit, fmt: dict) -> list[Sample]:
    """One frame: depth (+ colour, + labels when their files were planned into `unit.options`)."""
    intrinsics, shape, file_scale = read_camera(Path(unit.options["camera"]))
    depth = read_image(Path(unit.path))
    if depth.shape != shape:
        raise SampleError("unreadable", f"{unit.path}: depth is {depth.shape}, camera.json says {shape}")
    color = read_image(Path(unit.options["color"]), "RGB") if unit.options.get("color") else None
    labels = read_image(Path(unit.options["label"])) if unit.options.get("label") else None
    depth_scale = fmt.get("depth_scale") or file_scale or DEFAULT_DEPTH_SCALE
    sample = depth_to_sample(
        unit.sample_prefix, depth, intrinsics, depth_scale, fmt.get("max_depth_m"), color=color, labels=labels
    )
    return [sample]
