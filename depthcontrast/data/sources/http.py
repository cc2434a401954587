"""The `http` source: resumable, retried, sha256-verified downloads, renamed atomically into place.

A file is fetched into `.<name>.part` beside its destination. The part file survives failed
attempts and killed runs, so the next attempt asks for the rest with `Range: bytes=N-`. Only a
complete file whose sha256 matches is renamed to the destination; a mismatch deletes the part file.

URLs may hold `${VAR}` (tokens, signed URLs): they are expanded from the environment, and logs and
errors only ever show the URL as written in the config, never the expanded one.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, NoReturn
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from depthcontrast import __version__
from depthcontrast.errors import ConfigError, DownloadError
from depthcontrast.io_utils import sha256_file
from depthcontrast.log import progress_bar
from depthcontrast.paths import ENV_VAR_PATTERN, expand_env

LOG = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 16
PART_PREFIX = "."
PART_SUFFIX = ".part"
USER_AGENT = f"depthcontrast-pipeline/{__version__}"
URL_SCHEMES = ("http", "https")
# Client errors that say "try again later" rather than "this request is wrong".
RETRYABLE_CLIENT_STATUS = (408, 429)
CREDENTIAL_STATUS = (401, 403)
RANGE_NOT_SATISFIABLE = 416
PARTIAL_CONTENT = 206
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class _Transient(Exception):
    """One attempt failed in a way that another attempt may fix (network, 5xx, short read)."""


def expand_url(url: str) -> str:
    """Replace each `${VAR}` in `url` with its environment value; an unset variable is a DownloadError."""
    try:
        return expand_env(url, what=url)
    except ConfigError as exc:
        raise DownloadError(f"{exc}; export it and rerun") from None


def part_path(dest: Path) -> Path:
    """The partial file a download of `dest` writes to (kept between attempts to resume)."""
    return dest.with_name(f"{PART_PREFIX}{dest.name}{PART_SUFFIX}")


def download_file(
    url: str,
    sha256: str,
    dest: Path,
    *,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
) -> None:
    """Download `url` to `dest` and check its sha256; resume, retry and rename atomically.

    Does nothing when `dest` already has the expected sha256. Retries (with `backoff_s` doubled
    each time) connection errors, timeouts, 5xx and short reads; a 4xx fails at once.
    """
    dest = Path(dest)
    expected = sha256.lower()
    real_url = expand_url(url)
    if urlsplit(real_url).scheme not in URL_SCHEMES:
        raise DownloadError(f"{url}: not an http(s) URL; fix the URL in the config")
    if dest.is_file():
        if sha256_file(dest) == expected:
            LOG.info("%s: up to date", dest)
            return
        LOG.warning("%s: sha256 differs from the config; downloading it again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    _download_with_retries(real_url, url, part, retries=retries, backoff_s=backoff_s, timeout_s=timeout_s)
    actual = sha256_file(part)
    if actual != expected:
        part.unlink()
        raise DownloadError(
            f"{url}: sha256 mismatch (expected {expected}, got {actual}); the partial file was deleted: "
            "check the sha256 in the config or whether the file changed on the server"
        )
    os.replace(part, dest)
    LOG.info("%s: downloaded and verified", dest)


def fetch_urls(
    entries: list[dict[str, Any]],
    out_dir: Path,
    *,
    retries: int,
    backoff_s: float,
    timeout_s: float,
) -> list[str]:
    """Download every `{url, sha256, path?}` entry under `out_dir`; return the relative paths, in order.

    All target paths are checked before anything is downloaded: a path that escapes `out_dir` or
    two entries with the same path are a ConfigError.
    """
    out_dir = Path(out_dir)
    targets = [_target_path(index, entry) for index, entry in enumerate(entries)]
    seen: dict[str, int] = {}
    for index, rel in enumerate(targets):
        if rel in seen:
            raise ConfigError(
                f"urls[{index}] and urls[{seen[rel]}] both write {rel!r}; give one of them another `path`"
            )
        seen[rel] = index
    for entry, rel in zip(entries, targets, strict=True):
        download_file(
            entry["url"],
            entry["sha256"],
            out_dir / rel,
            retries=retries,
            backoff_s=backoff_s,
            timeout_s=timeout_s,
        )
    return targets


def _target_path(index: int, entry: dict[str, Any]) -> str:
    """The entry's path relative to the output folder: its `path`, else the URL's last component."""
    missing = [key for key in ("url", "sha256") if key not in entry]
    if missing:
        raise ConfigError(f"urls[{index}]: missing {', '.join(missing)}; each entry needs url and sha256")
    url = entry["url"]
    if "path" in entry:
        raw = entry["path"]
    else:
        raw = unquote(urlsplit(expand_url(url)).path.rsplit("/", 1)[-1])
        if not raw:
            raise ConfigError(f"urls[{index}] ({url}): the URL has no file name; set `path` for it")
    rel = PurePosixPath(raw)
    if rel.is_absolute() or ".." in rel.parts or rel.name in ("", "."):
        raise ConfigError(
            f"urls[{index}] ({url}): path {raw!r} must be a relative file path inside the dataset folder "
            "(no leading '/', no '..')"
        )
    return rel.as_posix()


def _download_with_retries(
    real_url: str, shown_url: str, part: Path, *, retries: int, backoff_s: float, timeout_s: float
) -> None:
    """Run attempts until `part` holds the whole body; back off between transient failures."""
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        try:
            _attempt(real_url, shown_url, part, timeout_s)
            return
        except _Transient as exc:
            if attempt == attempts:
                plural = "" if attempts == 1 else "s"
                kept = part.stat().st_size if part.exists() else 0
                advice = (
                    f"rerun to resume from the {kept} bytes kept in {part}"
                    if kept
                    else "check the network and the server, then rerun"
                )
                raise DownloadError(f"{shown_url}: failed after {attempts} attempt{plural}: {exc}; {advice}") from exc
            delay = backoff_s * 2 ** (attempt - 1)
            LOG.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", shown_url, attempt, attempts, exc, delay)
            time.sleep(delay)


def _attempt(real_url: str, shown_url: str, part: Path, timeout_s: float) -> None:
    """One request that appends the rest of the body to `part` (or restarts it from byte 0)."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        LOG.info("%s: resuming at byte %d", shown_url, offset)
    else:
        LOG.info("%s: downloading to %s", shown_url, part.parent)
    request = urllib.request.Request(real_url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == RANGE_NOT_SATISFIABLE and offset:
            _check_complete(exc.headers.get("Content-Range"), part, offset)
            return
        _raise_for_status(shown_url, exc.code, exc.reason)
    except urllib.error.URLError as exc:
        raise _Transient(_describe(exc.reason)) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _Transient(_describe(exc)) from exc
    except ValueError:
        # http.client rejects some URLs with a message that quotes the (possibly secret) URL.
        raise DownloadError(f"{shown_url}: not a valid URL once variables are expanded; fix it") from None
    with response:
        try:
            _receive(response, shown_url, part, offset)
        except (OSError, http.client.HTTPException) as exc:
            raise _Transient(_describe(exc)) from exc


def _receive(response: http.client.HTTPResponse, shown_url: str, part: Path, offset: int) -> None:
    """Write the response body to `part`: appended on 206, from byte 0 on any other 2xx."""
    if response.status == PARTIAL_CONTENT:
        match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if match is None or int(match.group(1)) != offset:
            part.unlink(missing_ok=True)
            raise _Transient(f"server answered a different range than bytes={offset}-; restarting")
        mode = "ab"
    else:
        if offset:
            LOG.info("%s: server ignored the Range request; restarting from byte 0", shown_url)
        offset, mode = 0, "wb"
    length_header = response.headers.get("Content-Length", "").strip()
    expected = int(length_header) if length_header.isdigit() else None
    received = 0
    with (
        open(part, mode) as out,
        _byte_bar(part.name[len(PART_PREFIX) : -len(PART_SUFFIX)], offset, expected) as bar,
    ):
        while chunk := response.read(CHUNK_BYTES):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    if expected is not None and received < expected:
        raise _Transient(f"connection closed after {received} of {expected} bytes")


def _check_complete(content_range: str | None, part: Path, offset: int) -> None:
    """416 on a resume: fine when the part file is already whole; else discard it and retry."""
    total = content_range.rsplit("/", 1)[-1].strip() if content_range else "*"
    if total.isdigit() and int(total) != offset:
        part.unlink()
        raise _Transient(f"partial file ({offset} bytes) is longer than the server's ({total}); restarting")
    LOG.info("%s: partial file already complete (%d bytes)", part.name, offset)


def _raise_for_status(shown_url: str, code: int, reason: str) -> NoReturn:
    """Turn an HTTP error status into a transient failure (retry) or a DownloadError (stop)."""
    if code >= 500 or code in RETRYABLE_CLIENT_STATUS:
        raise _Transient(f"HTTP {code} {reason}")
    if code in CREDENTIAL_STATUS:
        variables = ENV_VAR_PATTERN.findall(shown_url)
        where = f"the token in {', '.join(variables)}" if variables else "the credentials in the URL"
        advice = f"check {where} (signed URLs expire)"
    elif code == 404:
        advice = "check the URL in the config"
    else:
        advice = "the server rejected the request; check the URL in the config"
    raise DownloadError(f"{shown_url}: HTTP {code} {reason}; {advice}")


def _describe(exc: BaseException | str) -> str:
    """A short human description of a transport error."""
    return str(exc) or type(exc).__name__


def _byte_bar(desc: str, initial: int, remaining: int | None) -> tqdm:
    """A byte-count progress bar (depthcontrast.log settings)."""
    total = None if remaining is None else initial + remaining
    return progress_bar(desc=desc, initial=initial, total=total, unit="B", unit_scale=True, unit_divisor=1024)
