"""The `kicad` source: the KiCad 3D part library (Debian's kicad-packages3d) as labelled objects.

Raw files: the VRML models `<library>.3dshapes/<model>.wrl` of the package's `usr/share/kicad/3dmodels/`, taken
from the .deb (fetched with `apt-get download`, or a .deb the user already has) or from an extracted folder.

Names (pure functions of a model's path, so the shards' sample ids carry them):
- class: the library, with a trailing pitch `_<number>mm` removed: `Connector_PinHeader_2.54mm` and
  `Connector_PinHeader_1.27mm` are one class (once objects are scaled to a unit sphere they differ only by
  pitch). `model_class`.
- variant group: the model name up to its first digit, minus trailing separators and a trailing one-letter
  dimension prefix (`_D`, `_L`, `_P`, ...): `C_0805_2012Metric` → `C`, `CP_Radial_D10.0mm_P5.00mm` →
  `CP_Radial`, `QFN-32-1EP_5x5mm_P0.5mm` → `QFN`, `JST_XH_B4B-XH-A_1x04_P2.50mm_Vertical` → `JST_XH`; a name
  that starts with a digit keeps its letters with every number replaced by `#`. Sizes, pitches and pin counts
  of one package fall into one group, and a split assigns whole groups to train or test. `variant_group`.

Objects: points sampled uniformly on the surface (a triangle with probability proportional to its area, then a
uniform point in it), seeded per model by (seed, sha256 of its path), so the sample of a model does not depend
on which other models are there; then centred on the bounding-box centre of its triangles and divided by the
largest distance of a vertex from it (every point inside the unit sphere). KiCad's VRML unit is 0.1 inch
(2.54 mm); the scaling removes it, and each object's size in mm is kept in the shards' object list.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from depthcontrast.errors import DataError
from depthcontrast.io_utils import sha256_file

log = logging.getLogger(__name__)

PACKAGE = "kicad-packages3d"
VERSION = "6.0.10-1"
DEB_SHA256 = "e4ee3179c3935885a262e41543a675208ad5b3077d348728cac46f534d01109a"  # Debian bookworm's 6.0.10-1
LICENCE = "CC-BY-SA-4.0 with the KiCad libraries exception (usr/share/doc/kicad-packages3d/copyright)"
MODELS_PREFIX = "usr/share/kicad/3dmodels/"
LIBRARY_SUFFIX = ".3dshapes"
MODEL_SUFFIX = ".wrl"
VRML_UNIT_MM = 2.54  # KiCad's VRML files are in 0.1 inch
APT_LOCK_TIMEOUT_S = 300

_PITCH = re.compile(r"_\d+(?:\.\d+)?mm$")
_LEADING_LETTERS = re.compile(r"^\D*")
_TRAILING_DIMENSION = re.compile(r"(?:[_\-.,\s]+[A-Za-z]?)+$")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def model_class(library: str) -> str:
    """A library folder (`Connector_PinHeader_2.54mm.3dshapes`) → its class (`Connector_PinHeader`)."""
    return _PITCH.sub("", library.removesuffix(LIBRARY_SUFFIX))


def variant_group(model: str) -> str:
    """A model name (`CP_Radial_D10.0mm_P5.00mm`, with or without .wrl) → its variant group (`CP_Radial`)."""
    name = model.removesuffix(MODEL_SUFFIX)
    stem = _TRAILING_DIMENSION.sub("", _LEADING_LETTERS.match(name).group(0))
    return stem or _NUMBER.sub("#", name)


def model_path_parts(path: str) -> tuple[str, str]:
    """`<library>.3dshapes/<model>.wrl` (a manifest path, or a sample id ending in it) → (library, model)."""
    parts = PurePosixPath(path).parts
    if len(parts) < 2 or not parts[-2].endswith(LIBRARY_SUFFIX):
        raise DataError(f"{path}: not <library>{LIBRARY_SUFFIX}/<model>{MODEL_SUFFIX}")
    return parts[-2], parts[-1].removesuffix(MODEL_SUFFIX)


def object_seed(seed: int, path: str) -> np.random.Generator:
    """The generator that samples the model at `path`: seeded by (seed, the first 8 bytes of sha256(path))."""
    digest = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def sample_surface(triangles: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` points uniform on the surface of triangles [T, 3, 3]: float64 [count, 3].

    A triangle is drawn with probability area / total area; in it, barycentric (1 - √u, √u (1 - v), √u v)
    with u, v uniform gives a uniform point. DataError if the triangles have no area.
    """
    a, b, c = triangles[:, 0], triangles[:, 1], triangles[:, 2]
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = areas.sum()
    if not np.isfinite(total) or total <= 0:
        raise DataError("the surface has no area")
    cumulative = np.cumsum(areas)
    chosen = np.minimum(np.searchsorted(cumulative, rng.random(count) * cumulative[-1], side="right"), len(areas) - 1)
    u, v = rng.random(count), rng.random(count)
    root = np.sqrt(u)
    weights = np.stack([1 - root, root * (1 - v), root * v], axis=1)
    return np.einsum("nk,nkd->nd", weights, triangles[chosen])


def normalise(points: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, float]:
    """Points centred on the triangles' bounding-box centre and divided by the largest vertex distance from it:
    (float32 [P, 3] inside the unit sphere, that radius in VRML units)."""
    vertices = triangles.reshape(-1, 3)
    centre = (vertices.min(axis=0) + vertices.max(axis=0)) / 2
    radius = float(np.linalg.norm(vertices - centre, axis=1).max())
    if not radius > 0:
        raise DataError("the model has no extent")
    return ((points - centre) / radius).astype(np.float32), radius


# --- the .deb ------------------------------------------------------------------------------------------------


def fetch_deb(cache: Path, version: str = VERSION, sha256: str = DEB_SHA256) -> Path:
    """`kicad-packages3d_<version>_all.deb` in `cache`, fetched with `apt-get download` unless it is there;
    checked against `sha256`: DataError on a mismatch, and a fetched package that does not match is not kept."""
    cache.mkdir(parents=True, exist_ok=True)
    deb = cache / f"{PACKAGE}_{version.replace(':', '%3a')}_all.deb"
    if not deb.is_file():
        if shutil.which("apt-get") is None:
            raise DataError(f"{deb}: not there and apt-get is missing; set source.deb to a downloaded {PACKAGE} .deb")
        partial = cache / ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        command = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}", "download", f"{PACKAGE}={version}"]
        log.info("fetching %s %s with %s (~380 MB)", PACKAGE, version, " ".join(command))
        done = subprocess.run(command, cwd=partial, capture_output=True, text=True)
        fetched = sorted(partial.glob("*.deb"))
        if done.returncode != 0 or len(fetched) != 1:
            shutil.rmtree(partial, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["no .deb written"])[-1]
            raise DataError(f"apt-get download {PACKAGE}={version} failed in {cache}: {last}")
        found = sha256_file(fetched[0])
        if found != sha256:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"{deb}: sha256 {found} of the fetched package differs from the expected {sha256} "
                            f"(source.sha256); nothing kept")  # fmt: skip
        fetched[0].replace(deb)
        shutil.rmtree(partial, ignore_errors=True)
        return deb
    found = sha256_file(deb)
    if found != sha256:
        raise DataError(f"{deb}: sha256 {found} differs from the expected {sha256} (source.sha256); delete it to "
                        f"fetch it again")  # fmt: skip
    return deb


class _Slice(io.RawIOBase):
    """`size` bytes of a file from `start`, read-only and forward-only (an ar member for tarfile's stream mode)."""

    def __init__(self, handle: BinaryIO, start: int, size: int):
        handle.seek(start)
        self.handle, self.left = handle, size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.handle.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _data_member(handle: BinaryIO, deb: Path) -> tuple[str, int, int]:
    """(name, offset, size) of the data.tar.* member of a .deb (an `ar` archive)."""
    if handle.read(8) != b"!<arch>\n":
        raise DataError(f"{deb}: not a Debian package (no ar archive header)")
    while True:
        header = handle.read(60)
        if len(header) < 60:
            raise DataError(f"{deb}: no data.tar member")
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode())
        if name.startswith("data.tar"):
            return name, handle.tell(), size
        handle.seek(size + size % 2, io.SEEK_CUR)


def deb_models(deb: Path) -> Iterator[tuple[str, bytes]]:
    """(`<library>.3dshapes/<model>.wrl`, bytes) of every VRML model in the .deb, in archive order."""
    with open(deb, "rb") as handle:
        name, start, size = _data_member(handle, deb)
        stream = io.BufferedReader(_Slice(handle, start, size), buffer_size=1 << 20)
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                for member in archive:
                    path = member.name.removeprefix("./")
                    if member.isfile() and path.startswith(MODELS_PREFIX) and path.endswith(MODEL_SUFFIX):
                        rel = path.removeprefix(MODELS_PREFIX)
                        model_path_parts(rel)
                        yield rel, archive.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{deb}: {name} cannot be read ({exc})") from None


def extract_models(deb: Path, dest: Path) -> list[str]:
    """Write the .deb's VRML models under `dest` (created; it must not exist) and return their sorted paths."""
    files = []
    for rel, data in deb_models(deb):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        files.append(rel)
    if not files:
        raise DataError(f"{deb}: no {MODELS_PREFIX}*{LIBRARY_SUFFIX}/*{MODEL_SUFFIX} in the package")
    return sorted(files)


def folder_models(root: Path) -> list[str]:
    """Sorted `<library>.3dshapes/<model>.wrl` paths under an extracted 3dmodels folder."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (source.root: the 3dmodels folder that holds *{LIBRARY_SUFFIX}/)")
    files = sorted(str(p.relative_to(root).as_posix()) for p in root.glob(f"*{LIBRARY_SUFFIX}/*{MODEL_SUFFIX}"))
    if not files:
        raise DataError(f"{root}: no *{LIBRARY_SUFFIX}/*{MODEL_SUFFIX} models (source.root)")
    return files
