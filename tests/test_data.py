"""gru_lib.data: reading and validating AG News, and the download path against a local HTTP server."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gru_lib.cli import main as cli_main
from gru_lib.data import (
    CLASSES,
    NewsExample,
    default_data_dir,
    describe_ag_news,
    ensure_ag_news,
    load_ag_news,
    read_ag_news_csv,
)
from gru_lib.errors import DataError

GOOD_ROWS = (
    '"3","Wall St. Bears Claw Back (Reuters)","Reuters - Short-sellers, Wall Street\'s dwindling\\band."\n'
    '"2","Title with ""quotes""","A description, with a comma."\n'
)


@pytest.fixture
def shared_data() -> Path:
    """The shared AG News copy (the Makefile sets GRU_LIB_DATA); skipped only where it is absent."""
    root = Path(os.environ.get("GRU_LIB_DATA", "/work/shared/data"))
    if not (root / "ag_news" / "test.csv").is_file():
        pytest.skip(f"no AG News copy under {root}")
    return root


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --- the shared copy ---------------------------------------------------------------------------------------


def test_official_test_split(shared_data: Path) -> None:
    test = load_ag_news("test", shared_data, download=False)
    assert len(test) == 7600
    assert Counter(e.label for e in test) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    info = describe_ag_news(shared_data)
    assert info["test"].is_official and info["test"].summary() == "7,600 test rows (official file)"


def test_train_subset_is_reported_as_such(shared_data: Path) -> None:
    train = load_ag_news("train", shared_data, download=False)
    assert train[0] == NewsExample(
        2,
        "Wall St. Bears Claw Back Into the Black (Reuters)",
        "Reuters - Short-sellers, Wall Street's dwindling\\band of ultra-cynics, are seeing green again.",
    )
    assert train[0].text.startswith("Wall St. Bears Claw Back Into the Black (Reuters) Reuters - Short")
    info = describe_ag_news(shared_data)["train"]
    assert info.rows == len(train) and sum(info.per_class) == len(train)
    if info.rows < 120_000:
        assert not info.is_official
        assert info.summary() == f"{info.rows:,} train rows (subset; official: 120,000)"


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRU_LIB_DATA", str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("GRU_LIB_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_data_dir() == tmp_path / "cache" / "gru_lib"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_data_dir() == Path.home() / ".cache" / "gru_lib"


# --- validation: one line naming the file and the line -----------------------------------------------------


def test_reads_quoted_fields(tmp_path: Path) -> None:
    rows = read_ag_news_csv(write(tmp_path / "ok.csv", GOOD_ROWS))
    assert [r.label for r in rows] == [2, 1]
    assert rows[0].description == "Reuters - Short-sellers, Wall Street's dwindling\\band."
    assert rows[1].title == 'Title with "quotes"' and CLASSES[rows[1].label] == "Sports"


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('"1","only a title"', "line 3: expected 3 columns (label, title, description), got 2"),
        ('"1","a","b","c"', "line 3: expected 3 columns (label, title, description), got 4"),
        ('"0","a","b"', "line 3: label must be 1, 2, 3 or 4, got '0'"),
        ('"5","a","b"', "line 3: label must be 1, 2, 3 or 4, got '5'"),
        ('"x","a","b"', "line 3: label must be 1, 2, 3 or 4, got 'x'"),
        ("", "line 3: expected 3 columns (label, title, description), got 0"),
    ],
)
def test_malformed_row(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write(tmp_path / "train.csv", GOOD_ROWS + bad_line + "\n" + '"4","later","row"\n')
    with pytest.raises(DataError) as info:
        read_ag_news_csv(path)
    assert str(info.value) == f"{path}, {message}"
    assert "\n" not in str(info.value)


def test_invalid_utf8(tmp_path: Path) -> None:
    path = write(tmp_path / "test.csv", GOOD_ROWS.encode() + b'"1","caf\xe9","x"\n')
    with pytest.raises(DataError, match=r"test\.csv, line 3: bytes that are not UTF-8 \(0xe9 at column 9\)"):
        read_ag_news_csv(path)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.csv", "")
    with pytest.raises(DataError, match=f"^{empty}: file is empty"):
        read_ag_news_csv(empty)
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope.csv'}: file not found$"):
        read_ag_news_csv(tmp_path / "nope.csv")
    # Through the loader, without download: where to put the file and where to get it.
    with pytest.raises(DataError) as info:
        load_ag_news("test", tmp_path, download=False)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'ag_news' / 'test.csv'}: file not found; put train.csv and test.csv")
    assert f"into {tmp_path / 'ag_news'}/" in message and "CharCnn_Keras" in message


def test_unclosed_quote_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", GOOD_ROWS + '"1","a" junk,"b"\n')
    with pytest.raises(DataError, match=r"train\.csv, line 3: malformed CSV"):
        read_ag_news_csv(path)


def test_bad_split_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split must be one of train, test, got 'valid'"):
        load_ag_news("valid", tmp_path, download=False)


def test_cli_reports_counts_and_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write(tmp_path / "ag_news" / "test.csv", GOOD_ROWS)
    # A missing split is an error without --download: one line naming the file.
    assert cli_main(["data", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'ag_news' / 'train.csv'}: missing (pass --download to fetch the train split)\n"
    write(tmp_path / "ag_news" / "train.csv", GOOD_ROWS)
    assert cli_main(["data", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 test rows (subset; official: 7,600); World 0, Sports 1, Business 1, Sci/Tech 0" in out
    write(tmp_path / "ag_news" / "test.csv", GOOD_ROWS + '"9","a","b"\n')
    assert cli_main(["data", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'ag_news' / 'test.csv'}, line 3: label must be 1, 2, 3 or 4, got '9'\n"


# --- the download path, against a local HTTP server --------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        short = self.path.startswith("/short/")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if short else 0)))
        self.end_headers()
        self.wfile.write(body)  # a short transfer then ends: the connection closes 1000 bytes early

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    files: dict[str, bytes] = {}
    handler = type("Handler", (_Handler,), {"files": files})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_success(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    url, files = server
    files["test.csv"] = GOOD_ROWS.encode()
    ag_dir = ensure_ag_news(
        tmp_path, url_base=url + "/m", splits=("test",), checksums={"test": md5(files["test.csv"])}, progress=False
    )
    assert ag_dir == tmp_path / "ag_news"
    assert sorted(p.name for p in ag_dir.iterdir()) == ["test.csv"]
    assert (ag_dir / "test.csv").read_bytes() == files["test.csv"]
    assert [e.label for e in load_ag_news("test", tmp_path, download=False)] == [2, 1]


def test_download_url_from_environment(
    tmp_path: Path, server: tuple[str, dict[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, files = server
    files["test.csv"] = GOOD_ROWS.encode()
    monkeypatch.setenv("GRU_LIB_AG_NEWS_URL", url + "/mirror")
    monkeypatch.setenv("GRU_LIB_DATA", str(tmp_path))
    ensure_ag_news(splits=("test",), checksums={"test": md5(files["test.csv"])}, progress=False)
    assert (tmp_path / "ag_news" / "test.csv").is_file()


def test_existing_file_is_not_downloaded_again(tmp_path: Path) -> None:
    write(tmp_path / "ag_news" / "test.csv", GOOD_ROWS)  # md5 differs from the official one: read as it is
    assert len(load_ag_news("test", tmp_path, url_base="http://127.0.0.1:9/unused")) == 2


def test_checksum_mismatch_deletes_the_download(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    url, files = server
    files["test.csv"] = GOOD_ROWS.encode()
    with pytest.raises(DataError) as info:
        ensure_ag_news(tmp_path, url_base=url, splits=("test",), checksums={"test": "0" * 32}, progress=False)
    message = str(info.value)
    assert f"checksum mismatch for {url}/test.csv: md5 {md5(files['test.csv'])}, expected {'0' * 32}" in message
    assert "the downloaded file was deleted" in message
    assert list((tmp_path / "ag_news").iterdir()) == []


def test_cut_short_transfer_leaves_nothing(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    url, files = server
    files["test.csv"] = GOOD_ROWS.encode()
    with pytest.raises(DataError, match="was cut short") as info:
        ensure_ag_news(
            tmp_path, url_base=url + "/short", splits=("test",), checksums={"test": md5(files["test.csv"])},
            progress=False,
        )
    assert "nothing was kept" in str(info.value)
    assert list((tmp_path / "ag_news").iterdir()) == []


def test_http_error(tmp_path: Path, server: tuple[str, dict[str, bytes]]) -> None:
    url, _ = server
    with pytest.raises(DataError, match=f"download of {url}/train.csv failed: HTTP 404"):
        ensure_ag_news(tmp_path, url_base=url, splits=("train",), progress=False)
    assert list((tmp_path / "ag_news").iterdir()) == []


def test_unreachable_mirror_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_ag_news("train", tmp_path, url_base=f"http://127.0.0.1:{port}", timeout=5)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert message.startswith(f"could not download http://127.0.0.1:{port}/train.csv (")
    assert f"put train.csv and test.csv from http://127.0.0.1:{port}/ into {tmp_path / 'ag_news'}/" in message
    assert not (tmp_path / "ag_news" / "train.csv").exists()
