"""Finding MicroLens-50K: a user folder, the checkout's shared data, or a download to the cache."""

from __future__ import annotations

import functools
import http.server
import socket
import threading

import pytest

from linkedout import datasets
from linkedout.errors import LinkedOutError


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """No LINKEDOUT_DATA, no shared folder beside the checkout, an empty cache."""
    monkeypatch.delenv("LINKEDOUT_DATA", raising=False)
    monkeypatch.setattr(datasets, "_CHECKOUT_SHARED", tmp_path / "no-shared")
    monkeypatch.setenv("LINKEDOUT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _site(folder):
    """The two files on an HTTP server on 127.0.0.1; yields its URL."""
    folder.mkdir()
    for name in datasets.MICROLENS_FILES:
        (folder / name).write_text(f"content of {name}\n")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_linkedout_data_is_used_when_set(tmp_path, monkeypatch):
    for name in datasets.MICROLENS_FILES:
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("LINKEDOUT_DATA", str(tmp_path))
    assert datasets.microlens_50k() == tmp_path


def test_linkedout_data_without_the_files_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("LINKEDOUT_DATA", str(tmp_path))
    with pytest.raises(LinkedOutError, match="does not hold MicroLens-50k_pairs.tsv"):
        datasets.microlens_50k()


def test_download_into_the_cache_once(elsewhere, monkeypatch):
    server = _site(elsewhere / "site")
    monkeypatch.setenv("LINKEDOUT_MICROLENS_URL", f"http://127.0.0.1:{server.server_port}/")
    folder = datasets.microlens_50k()
    server.shutdown()
    assert folder == elsewhere / "cache" / "microlens-50k"
    for name in datasets.MICROLENS_FILES:
        assert (folder / name).read_text() == f"content of {name}\n"
    assert datasets.microlens_50k() == folder  # the server is gone: no second download


def test_offline_is_one_line_that_says_where_to_put_the_files(elsewhere, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LINKEDOUT_MICROLENS_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(LinkedOutError, match="could not download.*LINKEDOUT_DATA") as e:
        datasets.microlens_50k()
    assert "\n" not in str(e.value)
    assert not any((elsewhere / "cache").rglob("*.part"))
