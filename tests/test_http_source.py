"""The http source against a real HTTP server on 127.0.0.1 that drops, stalls, fails and lies."""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_server import FileServer

from depthcontrast.data.sources.http import download_file, fetch_urls
from depthcontrast.errors import ConfigError, DownloadError

BODY = random.Random(7).randbytes(256 * 1024)
BODY_SHA = hashlib.sha256(BODY).hexdigest()
HALF = len(BODY) // 2
FAST = {"retries": 3, "backoff_s": 0.01, "timeout_s": 5.0}


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as files:
        yield files


def part_of(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.part")


def test_download_writes_verified_file_and_leaves_no_part_file(server, tmp_path):
    url = server.add("/a.bin", BODY)
    dest = tmp_path / "a.bin"
    download_file(url, BODY_SHA, dest, **FAST)
    assert dest.read_bytes() == BODY
    assert not part_of(dest).exists()
    assert server.ranges("/a.bin") == [None]


def test_dropped_connection_is_resumed_with_range_from_bytes_received(server, tmp_path):
    url = server.add("/a.bin", BODY, drop_first=1)
    dest = tmp_path / "a.bin"
    download_file(url, BODY_SHA, dest, **FAST)
    assert dest.read_bytes() == BODY
    assert server.ranges("/a.bin") == [None, f"bytes={HALF}-"]


def test_repeated_drops_each_resume_from_the_bytes_on_disk(server, tmp_path):
    url = server.add("/a.bin", BODY, drop_first=2)
    dest = tmp_path / "a.bin"
    download_file(url, BODY_SHA, dest, **FAST)
    second_half = HALF + (len(BODY) - HALF) // 2
    assert server.ranges("/a.bin") == [None, f"bytes={HALF}-", f"bytes={second_half}-"]
    assert dest.read_bytes() == BODY


def test_stalled_transfer_times_out_and_resumes(server, tmp_path):
    url = server.add("/a.bin", BODY, stall_first=1, stall_s=2.0)
    dest = tmp_path / "a.bin"
    download_file(url, BODY_SHA, dest, retries=2, backoff_s=0.01, timeout_s=0.3)
    assert dest.read_bytes() == BODY
    assert server.ranges("/a.bin") == [None, f"bytes={HALF}-"]


def test_part_file_is_kept_after_a_failed_run_and_resumed_by_the_next(server, tmp_path):
    url = server.add("/a.bin", BODY, drop_first=1)
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match=r"failed after 1 attempt: connection closed after"):
        download_file(url, BODY_SHA, dest, retries=0, backoff_s=0.01, timeout_s=5.0)
    assert not dest.exists()
    assert part_of(dest).read_bytes() == BODY[:HALF]
    download_file(url, BODY_SHA, dest, retries=0, backoff_s=0.01, timeout_s=5.0)
    assert dest.read_bytes() == BODY
    assert server.ranges("/a.bin") == [None, f"bytes={HALF}-"]


def test_complete_part_file_is_finished_when_server_answers_416(server, tmp_path):
    url = server.add("/a.bin", BODY)
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(BODY)
    download_file(url, BODY_SHA, dest, **FAST)
    assert dest.read_bytes() == BODY
    assert not part_of(dest).exists()
    assert server.ranges("/a.bin") == [f"bytes={len(BODY)}-"]


def test_part_file_longer_than_the_server_file_is_restarted(server, tmp_path):
    url = server.add("/a.bin", BODY)
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(BODY + b"stale tail")
    download_file(url, BODY_SHA, dest, **FAST)
    assert dest.read_bytes() == BODY
    assert server.ranges("/a.bin") == [f"bytes={len(BODY) + 10}-", None]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.add("/a.bin", BODY, ignore_range=True)
    dest = tmp_path / "a.bin"
    part_of(dest).write_bytes(b"x" * 1000)  # wrong bytes: appending to them would fail the hash
    download_file(url, BODY_SHA, dest, **FAST)
    assert dest.read_bytes() == BODY
    assert server.ranges("/a.bin") == ["bytes=1000-"]


def test_checksum_mismatch_names_url_and_hashes_and_leaves_no_file(server, tmp_path):
    url = server.add("/a.bin", b"not the file you want")
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(url, BODY_SHA, dest, **FAST)
    message = str(info.value)
    assert url in message
    assert BODY_SHA in message
    assert hashlib.sha256(b"not the file you want").hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_not_found_fails_at_once_without_retrying(server, tmp_path):
    url = server.base_url + "/missing.bin"
    with pytest.raises(DownloadError, match=r"HTTP 404 .*check the URL"):
        download_file(url, BODY_SHA, tmp_path / "missing.bin", **FAST)
    assert len(server.hits_for("/missing.bin")) == 1
    assert list(tmp_path.iterdir()) == []


def test_forbidden_names_the_token_variable_and_never_shows_the_token(server, tmp_path, monkeypatch, caplog):
    secret = "s3cr3t-token-value"
    monkeypatch.setenv("DC_TEST_TOKEN", secret)
    server.add("/a.bin", BODY, status=403)
    url = server.base_url + "/a.bin?token=${DC_TEST_TOKEN}"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DownloadError, match=r"HTTP 403 .*DC_TEST_TOKEN") as info:
        download_file(url, BODY_SHA, tmp_path / "a.bin", **FAST)
    assert secret not in str(info.value)
    assert secret not in caplog.text
    assert [hit.query for hit in server.hits_for("/a.bin")] == [f"token={secret}"]


def test_server_errors_are_retried_with_growing_backoff_then_succeed(server, tmp_path):
    url = server.add("/a.bin", BODY, fail_first=2)
    dest = tmp_path / "a.bin"
    started = time.monotonic()
    download_file(url, BODY_SHA, dest, retries=3, backoff_s=0.1, timeout_s=5.0)
    assert time.monotonic() - started >= 0.1 + 0.2
    assert dest.read_bytes() == BODY
    assert len(server.hits_for("/a.bin")) == 3


def test_exhausted_retries_report_the_attempt_count_and_last_error(server, tmp_path):
    url = server.add("/a.bin", BODY, fail_first=100)
    with pytest.raises(DownloadError, match=r"failed after 3 attempts: HTTP 500"):
        download_file(url, BODY_SHA, tmp_path / "a.bin", retries=2, backoff_s=0.01, timeout_s=5.0)
    assert len(server.hits_for("/a.bin")) == 3
    assert list(tmp_path.iterdir()) == []


def test_refused_connection_is_retried_then_reported(tmp_path):
    with socket.socket() as probe:  # a port that nothing listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/a.bin"
    with pytest.raises(DownloadError, match=rf"{url}: failed after 2 attempts: .*refused"):
        download_file(url, BODY_SHA, tmp_path / "a.bin", retries=1, backoff_s=0.01, timeout_s=5.0)


def test_existing_file_with_right_hash_is_not_downloaded_again(server, tmp_path, caplog):
    url = server.add("/a.bin", BODY)
    dest = tmp_path / "a.bin"
    dest.write_bytes(BODY)
    caplog.set_level(logging.INFO)
    download_file(url, BODY_SHA, dest, **FAST)
    assert server.hits_for("/a.bin") == []
    assert "up to date" in caplog.text


def test_existing_file_with_wrong_hash_is_replaced(server, tmp_path):
    url = server.add("/a.bin", BODY)
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old version")
    download_file(url, BODY_SHA, dest, **FAST)
    assert dest.read_bytes() == BODY


def test_url_variables_are_expanded_from_the_environment(server, tmp_path, monkeypatch):
    server.add("/data/a.bin", BODY)
    monkeypatch.setenv("DC_TEST_BASE", server.base_url + "/data")
    monkeypatch.setenv("DC_TEST_TOKEN", "abc123")
    download_file("${DC_TEST_BASE}/a.bin?sig=${DC_TEST_TOKEN}", BODY_SHA, tmp_path / "a.bin", **FAST)
    assert (tmp_path / "a.bin").read_bytes() == BODY
    assert [hit.query for hit in server.hits_for("/data/a.bin")] == ["sig=abc123"]


def test_unset_url_variable_is_an_error_naming_it(server, tmp_path, monkeypatch):
    monkeypatch.delenv("DC_TEST_UNSET", raising=False)
    url = server.add("/a.bin", BODY) + "?token=${DC_TEST_UNSET}"
    with pytest.raises(DownloadError, match="DC_TEST_UNSET is not set"):
        download_file(url, BODY_SHA, tmp_path / "a.bin", **FAST)
    assert server.hits == []


def test_fetch_urls_names_files_after_the_url_unless_a_path_is_given(server, tmp_path):
    other = b"second file"
    entries = [
        {"url": server.add("/dir/scan%201.bin", BODY) + "?sig=xyz", "sha256": BODY_SHA},
        {
            "url": server.add("/other", other),
            "sha256": hashlib.sha256(other).hexdigest(),
            "path": "sub/other.bin",
        },
    ]
    written = fetch_urls(entries, tmp_path / "raw", **FAST)
    assert written == ["scan 1.bin", "sub/other.bin"]
    assert (tmp_path / "raw" / "scan 1.bin").read_bytes() == BODY
    assert (tmp_path / "raw" / "sub" / "other.bin").read_bytes() == other


@pytest.mark.parametrize("bad_path", ["../escape.bin", "/etc/escape.bin", "sub/../../escape.bin", "."])
def test_fetch_urls_refuses_paths_outside_the_output_folder(server, tmp_path, bad_path):
    entries = [
        {"url": server.add("/ok.bin", BODY), "sha256": BODY_SHA},
        {"url": server.add("/a.bin", BODY), "sha256": BODY_SHA, "path": bad_path},
    ]
    with pytest.raises(ConfigError, match=r"urls\[1\].*relative file path"):
        fetch_urls(entries, tmp_path / "raw", **FAST)
    assert server.hits == []  # checked before anything is downloaded


def test_fetch_urls_refuses_two_entries_with_the_same_target(server, tmp_path):
    entries = [
        {"url": server.add("/a/x.bin", BODY), "sha256": BODY_SHA},
        {"url": server.add("/b/x.bin", BODY), "sha256": BODY_SHA},
    ]
    with pytest.raises(ConfigError, match=r"urls\[1\] and urls\[0\] both write 'x.bin'"):
        fetch_urls(entries, tmp_path / "raw", **FAST)
    assert server.hits == []
