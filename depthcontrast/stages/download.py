"""The download stage: get a dataset's raw files and write results/raw/{dataset}/MANIFEST.json."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from depthcontrast.data.manifest import MANIFEST_NAME, Manifest, describe_files, write_manifest
from depthcontrast.data.sources.builtin import copy_builtin
from depthcontrast.data.sources.local import list_local
from depthcontrast.errors import ConfigError
from depthcontrast.paths import expand_env

log = logging.getLogger(__name__)
OFFICIAL_KINDS = ("scannet", "redwood", "kitti", "waymo")


def _fetch(source: dict[str, Any], out_dir: Path) -> list[str]:
    """Download the source's `urls` into out_dir (resumable, verified); return relative paths."""
    from depthcontrast.data.sources.http import fetch_urls

    for entry in source["urls"]:
        name = entry.get("path") or urlsplit(entry["url"]).path.rsplit("/", 1)[-1]
        if Path(name).name == MANIFEST_NAME and Path(name).parent == Path("."):
            raise ConfigError(f"source.urls: {entry['url']}: the file name {MANIFEST_NAME} is reserved; set `path`")
    options = {key: source[key] for key in ("retries", "backoff_s", "timeout_s")}
    return fetch_urls(source["urls"], out_dir, **options)


def _official(kind: str, source: dict[str, Any], out_dir: Path) -> tuple[Path, list[str], str]:
    """An official-layout dataset: an existing `root`, or the user's own licensed `urls`."""
    from depthcontrast.data.formats import official_layout_files

    if "root" in source:
        root = Path(expand_env(source["root"], what="source.root")).expanduser().resolve()
        return root, official_layout_files(kind, root), str(root)
    if "urls" in source:
        return out_dir, _fetch(source, out_dir), "."
    raise ConfigError(
        f"source kind {kind!r} needs `root` (your existing copy in the official layout) or `urls` "
        f"(your own licensed download links); the pipeline never downloads {kind} without them"
    )


def run_download(dataset: str, source: dict[str, Any], out_dir: Path) -> Manifest:
    """Fetch or locate the raw files of `dataset` as `source` (validated config) says; write the manifest."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = source["kind"]
    log.info("download %s: source kind %s", dataset, kind)
    if kind == "builtin":
        root, files, root_field = out_dir, copy_builtin(source["subset"], out_dir), "."
    elif kind == "local":
        root, files = list_local(source["path"], source["glob"])
        root_field = str(root)
    elif kind == "http":
        root, files, root_field = out_dir, _fetch(source, out_dir), "."
    elif kind == "corpus":
        from depthcontrast.data.sources.corpus import generate_corpus

        root, files, root_field = out_dir, generate_corpus(source, out_dir), "."
    elif kind in OFFICIAL_KINDS:
        root, files, root_field = _official(kind, source, out_dir)
    else:  # the schema makes this unreachable
        raise ConfigError(f"unknown source kind {kind!r}")
    log.info("hashing %d files under %s", len(files), root)
    manifest = Manifest(dataset, kind, root_field, describe_files(root, files))
    write_manifest(manifest, out_dir / MANIFEST_NAME)
    total_mb = sum(f.size for f in manifest.files) / 1e6
    log.info("download %s: %d files, %.1f MB -> %s", dataset, len(files), total_mb, out_dir / MANIFEST_NAME)
    return manifest
