"""Debian's libcgal-demo package as a source of meshes: its identity, how to fetch it and read files out of it.

The package (apt, CC0 data) ships CGAL's example data in `usr/share/doc/libcgal-dev/data.tar.gz`, among it
meshes of real scanned objects and of modelled shapes. The built-in indoor data (scripts/make_builtin_data.py)
takes three of them; the pretraining corpus (data/sources/corpus.py) a pool of others, listed here with the
sha256 of each file.
"""

from __future__ import annotations

import io
import logging
import subprocess
import tarfile
from pathlib import Path

from depthcontrast.errors import DownloadError
from depthcontrast.io_utils import atomic_path, sha256_file

log = logging.getLogger(__name__)

CGAL_PACKAGE = "libcgal-demo"
CGAL_VERSION = "5.5.1-2"
CGAL_DEB = f"{CGAL_PACKAGE}_{CGAL_VERSION}_all.deb"
CGAL_DEB_SHA256 = "78b09b23d4d6d1bf15552a1060b419ab3fc09918486462faed197e5fc6ac3735"
CGAL_DOC_DIR = "./usr/share/doc/libcgal-dev/"  # inside the deb's data.tar.xz
CGAL_DATA_TAR = "data.tar.gz"  # inside CGAL_DOC_DIR
CGAL_MESH_DIR = "data/meshes/"  # inside CGAL_DATA_TAR
LICENCE_CGAL = (
    "CC0-1.0 (Debian libcgal-dev copyright: files without an explicit notice, e.g. examples and their data, are CC0)"
)
APT_LOCK_TIMEOUT_S = 300

# The corpus's mesh pool: file stem in CGAL_MESH_DIR (.off) -> sha256. Objects of many shapes, scanned and
# modelled (CGAL does not say which); none of the built-in evaluation's meshes (bunny, armadillo, dragon).
CORPUS_MESHES: dict[str, str] = {
    "anchor": "5009b3400b73ef199b6ac9a24a27f4f76e1aa7b71d957a50cb6dcbe09868ff3b",
    "bear": "058f6ce62635e5f86958adea9706a8dca3ebe4fae76a0d32b8318d107d40bda6",
    "blade": "088832ae983887c8ed7a3eaf1993eff172edcf35adc2811f9237b635fb2d2798",
    "bones": "004bd26f0029910eb2e2fd38b7ca11ea05dd4182e247c0fb778533b860dd7ab2",
    "bull": "5c7b9631f8c278c12b30c0eea0b72da871504674516daf7d7eaaf5fa4154224a",
    "cactus": "333a41cbf5e30f2f675392adb7b0f7fb3f5919b39f15d2ae280830e662247925",
    "camel": "9ac960a9fee27e6fcc6baaa2340260834625084ee20f4a97194212404e650a22",
    "cheese": "713ace843a5f0a8cc78a16ed0cedd5a5a0a2897d4bff02ac833a3b7e9382efb4",
    "couplingdown": "01fc9017b44a803b1130f8f5d51f0c7d8bbfa27b908f5166c498fe21e57f2284",
    "cow": "1c5a25c3047fc6b14dd0c962d3562b1796671422ab4634f9d46f9f23814cd54a",
    "dino": "acca16a64f425dd705375ada71ed4cf046beb2a1a06629a3c2325bb0530475db",
    "diplodocus": "661fdac29eca4b205e354da112b3cbfd08dcfae07df989234b71421e62521c96",
    "elk": "7f1229fd3de0b4fc0884bbbfbd056a57ff0cb0f7afd71b5168a84209cc585abb",
    "fandisk": "edffb263f037b023757259befd5532fccb48bdc3c35a1da2e11e235a647bd050",
    "femur": "75d208fabf7a7b134cfcf2171bad68c331e3bff55309ffe38a01a7b31352fbc6",
    "hand": "cfcf1562726167ca704a091a8651bfd1d72f6eb96b4b2819321f0520721b35c7",
    "head": "75aecfdbf9c0386dd839f5bf0322fb5a889ed7efd31d040f125e383041b4b919",
    "helmet": "0669ab781a80570cfdd2932b06a7c33f89fd855a9ddb69dc45e50082253a5a32",
    "homer": "99396cceb6f97e9681545d5c718d4ed87da3ceb78d22afb0218d570e9f0a0873",
    "knot1": "13d9d2f3459189630680dad6a3b5528d5cc794967b791580a0e1f6642903d030",
    "lion": "5749c7a8d89a7fbda350e842c6b5f233595ea6e6201604087219325af9c82070",
    "lion-head": "cf159eeb12a3f3f345e57448693e9f0d115f3f6f38fd1d4519b336cede849289",
    "man": "9f04482c1028de539f02319c476d6c95141e9fbc389e9d469041ab63096de5d4",
    "mannequin-devil": "9424b7132b58766984051fb7757543e88972f91fe7e9565d4e5b715b204f74a5",
    "mech-holes-shark": "2ad3d8fb970b319eb8a32040664c25d4e01370f20ad57f4fde5c63fef3b6cca9",
    "mushroom": "03768b314714676d9305361c7c124be3b2c991c59fe8c752a49047115b4dfa00",
    "nefertiti": "d8b13239b988d0262fbc91e88da1d314eeb1b284c327a3fe76089c2b54886ccf",
    "pig": "7a164eee3a5c3630687974862cb587082e25fca1e8cc99d43bd3626bb5f87ff2",
    "pinion": "191a8cdfa3807e09d7dffb4bdc94dabe1231b4594001ca134100a9a32e996599",
    "refined_elephant": "a170eed4ef33ef412a72b824d791f69ea59ee5f5a7c12dc1ae9077b6eb030650",
    "rotor": "8db85ca5041eef6d952e48f0553a25fddb42f237b80a37b7aff096b8df3aca32",
    "spool": "84ec2367becf6994f96055fa88aaf3a00df1fdd84bd0fa615bdc043c9944b7b1",
    "triceratops": "0fb444933884486a09eb4329a832f15ab792590f2a5bb75385d157e654ddbf5c",
    "turbine": "8ae52b6b325a05e0755983706ab55aba0f42d3ea0569dd29b33cdcb16c20f4c8",
}


def fetch_cgal_deb(work: Path) -> Path:
    """The package in `work` (fetched with `apt-get download` when missing), its sha256 checked."""
    work.mkdir(parents=True, exist_ok=True)
    deb = work / CGAL_DEB
    if not deb.is_file():
        log.info("apt-get download %s=%s", CGAL_PACKAGE, CGAL_VERSION)
        apt = ["apt-get", "-o", f"DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"]
        try:
            run_command([*apt, "download", f"{CGAL_PACKAGE}={CGAL_VERSION}"], work)
        except DownloadError:
            log.info("apt-get download failed; running apt-get update once and retrying")
            run_command([*apt, "update"], work)
            run_command([*apt, "download", f"{CGAL_PACKAGE}={CGAL_VERSION}"], work)
    check_sha256(deb, CGAL_DEB_SHA256)
    return deb


def run_command(cmd: list[str], cwd: Path) -> None:
    """Run `cmd`; DownloadError with its stderr's tail when it fails or is missing."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise DownloadError(f"{cmd[0]}: not found; fetching the inputs needs pip and apt-get (Debian)") from None
    if proc.returncode != 0:
        raise DownloadError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def check_sha256(path: Path, expected: str) -> None:
    """DownloadError unless `path` exists with this sha256."""
    if not path.is_file():
        raise DownloadError(f"{path}: input missing")
    actual = sha256_file(path)
    if actual != expected:
        raise DownloadError(f"{path}: sha256 {actual} differs from the expected {expected}; delete it to fetch again")


def deb_data_tar(deb: Path) -> bytes:
    """The data.tar.* member of a Debian package (an `ar` archive)."""
    raw = deb.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise DownloadError(f"{deb}: not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(raw):
        name = raw[pos : pos + 16].decode().strip().rstrip("/")
        size = int(raw[pos + 48 : pos + 58].decode().strip())
        if name.startswith("data.tar"):
            return raw[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    raise DownloadError(f"{deb}: no data.tar member")


def read_member(archive: tarfile.TarFile, member: str, where: Path) -> bytes:
    """The bytes of `member` of an open tar archive; DownloadError naming `where` when it is missing."""
    try:
        handle = archive.extractfile(member)
    except KeyError:
        handle = None
    if handle is None:
        raise DownloadError(f"{where}: has no file {member}")
    return handle.read()


def extract_corpus_meshes(deb: Path, names: list[str], dest: Path) -> dict[str, Path]:
    """Write the pool meshes `names` from the package into `dest` (sha256 checked); name -> path."""
    with tarfile.open(fileobj=io.BytesIO(deb_data_tar(deb))) as package:
        data = read_member(package, CGAL_DOC_DIR + CGAL_DATA_TAR, deb)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for name in sorted(names):
            path = dest / f"{name}.off"
            if not (path.is_file() and sha256_file(path) == CORPUS_MESHES[name]):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(read_member(archive, f"{CGAL_MESH_DIR}{name}.off", deb))
            check_sha256(path, CORPUS_MESHES[name])
            out[name] = path
    return out
