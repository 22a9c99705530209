"""Chapter 4: AG News, read from its official CSV files (and downloaded once into a cache when missing).

The format (Zhang, Zhao and LeCun, 2015; the ``ag_news_csv`` release): UTF-8, no header, one article per line,
three fields each wrapped in double quotes (a quote inside a field is doubled)::

    "3","Wall St. Bears Claw Back Into the Black (Reuters)","Reuters - Short-sellers, Wall Street's ..."

class index 1..4 (World, Sports, Business, Sci/Tech), title, description. In code labels are 0..3.
The official splits have 120,000 (train) and 7,600 (test) rows, 30,000 and 1,900 per class.

Where the files live: ``<data_dir>/ag_news/{train,test}.csv`` with ``data_dir`` the explicit argument, else
``$GRU_LIB_DATA``, else the user's cache home (``$XDG_CACHE_HOME`` or ``~/.cache``) ``/gru_lib``.
A file that is there is read as it is and validated (it may be a subset: its checksum is only reported).
A file that is missing is downloaded (``download=True``) from the mirror torchtext used, atomically: into a
temporary file beside the target, verified against the published md5, then renamed; a mismatch or a transfer
cut short leaves nothing behind. ``$GRU_LIB_AG_NEWS_URL`` (or ``url_base=``) points at another mirror.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import http.client
import io
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gru_lib.atomic import atomic_output
from gru_lib.errors import DataError, os_error_reason

__all__ = [
    "CLASSES",
    "SPLITS",
    "AG_NEWS_URL_BASE",
    "AG_NEWS_MD5",
    "OFFICIAL_ROWS",
    "NewsExample",
    "SplitInfo",
    "default_data_dir",
    "ensure_ag_news",
    "read_ag_news_csv",
    "load_ag_news",
    "describe_ag_news",
    "data_command", "refuse_non_file"]

CLASSES: tuple[str, ...] = ("World", "Sports", "Business", "Sci/Tech")
SPLITS: tuple[str, ...] = ("train", "test")
AG_NEWS_URL_BASE = "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/master/data/ag_news_csv"
AG_NEWS_MD5: dict[str, str] = {
    "train": "b1a00f826fdfbd249f79597b59e1dc12",
    "test": "d52ea96a97a2d943681189a97654912d",
}
OFFICIAL_ROWS: dict[str, int] = {"train": 120_000, "test": 7_600}
DATA_ENV = "GRU_LIB_DATA"
URL_ENV = "GRU_LIB_AG_NEWS_URL"
_CHUNK = 1 << 16
# A whole download's time limit in seconds (``timeout`` bounds each read only): a mirror that trickles a byte
# every few seconds is given up on. At 30 min it allows about 17 kB/s for train.csv's 29.5 MB.
DOWNLOAD_DEADLINE_S = 1800.0
# The longest field the CSV reader accepts, in characters (the csv module's default limit is 131,072; the
# longest AG News field is under 1,000): long enough for any real article, short enough to refuse garbage.
MAX_FIELD_CHARS = 1 << 20


@dataclass(frozen=True)
class NewsExample:
    """One article: ``label`` in 0..3 (an index into :data:`CLASSES`), its title and its description."""

    label: int
    title: str
    description: str

    @property
    def text(self) -> str:
        """What a model reads: ``title + " " + description`` (as Hugging Face's ``ag_news`` joins them)."""
        return f"{self.title} {self.description}"


@dataclass(frozen=True)
class SplitInfo:
    """What :func:`describe_ag_news` reports about one split's file."""

    split: str
    path: Path
    rows: int
    per_class: tuple[int, ...]
    md5: str

    @property
    def official_rows(self) -> int:
        return OFFICIAL_ROWS[self.split]

    @property
    def is_official(self) -> bool:
        """True when the file is byte for byte the published one (its md5 matches)."""
        return self.md5 == AG_NEWS_MD5[self.split]

    def summary(self) -> str:
        """E.g. ``10,880 train rows (subset; official: 120,000)`` or ``7,600 test rows (official file)``."""
        if self.is_official:
            kind = "official file"
        elif self.rows < self.official_rows:
            kind = f"subset; official: {self.official_rows:,}"
        else:
            kind = f"not the official file; official: {self.official_rows:,} rows"
        return f"{self.rows:,} {self.split} rows ({kind})"


def default_data_dir() -> Path:
    """``$GRU_LIB_DATA`` if set, else ``$XDG_CACHE_HOME/gru_lib`` (``~/.cache/gru_lib`` by default)."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home).expanduser() / "gru_lib"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def _url_base(url_base: str | None) -> str:
    """The mirror's address (argument, else ``$GRU_LIB_AG_NEWS_URL``, else the default), checked to be an
    http(s) or file URL before anything is fetched; a malformed one is a :class:`DataError` naming its source."""
    source = "url_base" if url_base else URL_ENV if os.environ.get(URL_ENV) else "AG_NEWS_URL_BASE"
    base = (url_base or os.environ.get(URL_ENV) or AG_NEWS_URL_BASE).rstrip("/")
    try:
        parts = urllib.parse.urlsplit(base)
    except ValueError as error:
        raise DataError(f"{source}={base!r}: not a valid URL ({error})") from None
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
        raise DataError(f"{source}={base!r}: not a valid URL (expected http://, https:// or file://)")
    return base


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _where_to_put(ag_dir: Path, base: str) -> str:
    return (
        f"put train.csv and test.csv from {base}/ into {ag_dir}/ "
        f"(or set {DATA_ENV} to the directory that holds an ag_news/ folder)"
    )


class _Watchdog:
    """Shuts down the sockets of one download when its deadline passes, so that a mirror that trickles its
    headers or its body a byte at a time (each read well within ``timeout``) cannot hold the download open:
    the blocked read then fails, and :attr:`fired` says why."""

    def __init__(self, deadline: float) -> None:
        self.fired = False
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(deadline, self._fire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        self._sockets.append(sock)

    def _fire(self) -> None:
        self.fired = True
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def opener(self) -> urllib.request.OpenerDirector:
        """An opener whose HTTP and HTTPS connections register their sockets here."""
        watchdog = self

        def watched(base: type) -> type:
            class Connection(base):  # type: ignore[misc, valid-type]
                def connect(self) -> None:
                    super().connect()
                    watchdog.watch(self.sock)
            return Connection

        class Http(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(watched(http.client.HTTPConnection), req)

        class Https(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                extra = {"check_hostname": self._check_hostname} if hasattr(self, "_check_hostname") else {}
                return self.do_open(watched(http.client.HTTPSConnection), req, context=self._context, **extra)

        return urllib.request.build_opener(Http, Https)


def _download(url: str, target: Path, md5: str, *, timeout: float, progress: bool,
              deadline: float = DOWNLOAD_DEADLINE_S) -> None:
    """Fetch ``url`` into ``target``: temporary file in the same folder, check length and md5, then rename.
    Each read waits at most ``timeout`` seconds and the whole transfer ``deadline`` (plus one read)."""
    from tqdm import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    received, total, started = 0, None, time.monotonic()
    watchdog = _Watchdog(deadline)

    def too_slow() -> DataError:
        return DataError(f"download of {url} took longer than {deadline:.0f} s (got {received:,} bytes; the "
                         "mirror is too slow); nothing was kept")

    try:
        with watchdog, atomic_output(target) as tmp:  # renamed onto target only once the checks below pass
            with open(tmp, "wb") as handle, watchdog.opener().open(url, timeout=timeout) as response:
                declared = response.headers.get("Content-Length")
                total = int(declared) if declared and declared.isdigit() else None
                digest = hashlib.md5()
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=target.name, disable=not progress, leave=False
                ) as bar:
                    while chunk := response.read1(_CHUNK):  # what has arrived: read() would wait for it all
                        if time.monotonic() - started > deadline:
                            raise too_slow()
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if watchdog.fired:  # the watchdog ended the body early
                raise too_slow()
            if total is not None and received != total:
                raise DataError(f"download of {url} was cut short: got {received:,} of {total:,} bytes; "
                                "nothing was kept")
            actual = digest.hexdigest()
            if actual != md5:
                raise DataError(
                    f"checksum mismatch for {url}: md5 {actual}, expected {md5}; the downloaded file was deleted"
                )
    except urllib.error.HTTPError as error:
        raise DataError(f"download of {url} failed: HTTP {error.code} {error.reason}") from None
    except http.client.IncompleteRead as error:
        if watchdog.fired:
            raise too_slow() from None
        raise DataError(
            f"download of {url} was cut short: got {received + len(error.partial):,} bytes"
            + (f" of {total:,}" if total is not None else "")
            + "; nothing was kept"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError) as error:
        if watchdog.fired:  # the watchdog shut the connection while headers trickled in
            raise too_slow() from None
        reason = getattr(error, "reason", None) or error
        raise DataError(f"could not download {url} ({reason})") from None


def ensure_ag_news(
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    url_base: str | None = None,
    timeout: float = 30.0,
    splits: Iterable[str] = SPLITS,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    deadline: float = DOWNLOAD_DEADLINE_S,
) -> Path:
    """Return ``<data_dir>/ag_news`` once it holds ``{split}.csv`` for every split asked for.

    Files already there are left as they are. Missing ones are downloaded from ``url_base`` (default
    ``$GRU_LIB_AG_NEWS_URL`` or the torchtext mirror) with a socket ``timeout`` in seconds per read and a
    ``deadline`` in seconds for each file (default :data:`DOWNLOAD_DEADLINE_S`), and verified
    against ``checksums`` (default :data:`AG_NEWS_MD5`). With ``download=False``, or when the download fails
    (offline, unreachable), a :class:`DataError` says where to put the files and where to get them.
    """
    ag_dir = Path(data_dir).expanduser() / "ag_news" if data_dir is not None else default_data_dir() / "ag_news"
    base = _url_base(url_base)
    sums = dict(AG_NEWS_MD5 if checksums is None else checksums)
    for split in splits:
        _check_split(split)
        target = ag_dir / f"{split}.csv"
        if target.is_file():
            continue
        refuse_non_file(target)
        if not download:
            raise DataError(f"{target}: file not found; {_where_to_put(ag_dir, base)}")
        try:
            _download(f"{base}/{split}.csv", target, sums[split], timeout=timeout, progress=progress,
                      deadline=deadline)
        except DataError as error:
            raise DataError(f"{error}; {_where_to_put(ag_dir, base)}") from None
        except OSError as error:  # the cache folder cannot be written, the disk is full, ...
            reason = os_error_reason(error)
            raise DataError(f"{target}: cannot write ({reason}); {_where_to_put(ag_dir, base)}") from None
    return ag_dir


def refuse_non_file(target: Path) -> None:
    """Raise :class:`DataError` when ``target`` exists (or is a link) but is no regular file: a directory, a
    symlink loop, a broken symlink or a device is the user's to fix, so the message says what it is, never
    "not found" with a download hint (a download would fail to replace it, or replace what a link points to)."""
    if target.is_symlink() and not target.exists():
        try:
            target.stat()
        except OSError as error:
            raise DataError(f"{target}: a symbolic link that cannot be followed ({os_error_reason(error)})") from None
    if target.is_dir():
        raise DataError(f"{target}: is a directory, expected the CSV file of the split")
    if target.exists():
        raise DataError(f"{target}: not a regular file, expected the CSV file of the split")


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"{path}, line {line}: bytes that are not UTF-8 (0x{raw[error.start]:02x} at column {column})"
        ) from None


def read_ag_news_csv(path: str | Path) -> list[NewsExample]:
    """Parse and validate one AG News CSV file; every problem is a :class:`DataError` naming file and line."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({os_error_reason(error)})") from None
    if not raw.strip():
        raise DataError(f"{path}: file is empty, expected rows of (label, title, description)")
    text = _decode(path, raw).removeprefix("\ufeff")  # a UTF-8 byte-order mark (spreadsheet exports)
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(f"{path}, line {line}: a NUL byte (0x00), which no text field holds")
    return _parse_rows(path, text)


@contextlib.contextmanager
def _field_limit(limit: int):  # type: ignore[no-untyped-def]
    """The csv module's (process-wide) field size limit set to ``limit`` for the block, then restored."""
    previous = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _parse_rows(path: Path, text: str) -> list[NewsExample]:
    """The rows of ``text`` (decoded CSV), validated. A malformed row is reported at the line where the row
    starts (where a bad quote opens), not where the parser gave up."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    examples: list[NewsExample] = []
    line = 0
    try:
        with _field_limit(MAX_FIELD_CHARS):
            for row in reader:
                examples.append(_example(path, reader.line_num, row))
                line = reader.line_num
    except csv.Error as error:
        stopped = f"; the parser stopped at line {reader.line_num}" if reader.line_num > line + 1 else ""
        if "field larger than field limit" in str(error):
            raise DataError(f"{path}, line {line + 1}: a field longer than {MAX_FIELD_CHARS:,} characters "
                            f"(MAX_FIELD_CHARS){stopped}") from None
        raise DataError(f"{path}, line {line + 1}: malformed CSV ({error}){stopped}") from None
    return examples


def _example(path: Path, line: int, row: list[str]) -> NewsExample:
    if len(row) != 3:
        raise DataError(f"{path}, line {line}: expected 3 columns (label, title, description), got {len(row)}")
    label = row[0].strip()
    if label not in ("1", "2", "3", "4"):
        raise DataError(f"{path}, line {line}: label must be 1, 2, 3 or 4, got {row[0]!r}")
    return NewsExample(int(label) - 1, row[1], row[2])


def load_ag_news(
    split: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = True,
    url_base: str | None = None,
    timeout: float = 30.0,
) -> list[NewsExample]:
    """The ``split`` ("train" or "test") of AG News as :class:`NewsExample` rows, in file order.

    ``data_dir`` is the directory that holds ``ag_news/`` (default :func:`default_data_dir`); a missing file
    is downloaded first when ``download`` is true (see :func:`ensure_ag_news`).
    """
    _check_split(split)
    ag_dir = ensure_ag_news(data_dir, download=download, url_base=url_base, timeout=timeout, splits=(split,))
    return read_ag_news_csv(ag_dir / f"{split}.csv")


def describe_ag_news(data_dir: str | Path | None = None, *, download: bool = True) -> dict[str, SplitInfo]:
    """Row counts, per-class counts and checksums of each split (every file validated by reading it).

    Like :func:`load_ag_news` it downloads what is missing by default, so a chapter that calls it works on a
    fresh machine. With ``download=False`` (the ``data`` command without ``--download``) it only describes the
    splits that are there and raises :class:`DataError` when there is none.
    """
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    present = [s for s in SPLITS if (root / "ag_news" / f"{s}.csv").is_file()]
    if download or not present:
        ensure_ag_news(root, download=download)
        present = list(SPLITS)
    info: dict[str, SplitInfo] = {}
    for split in present:
        path = root / "ag_news" / f"{split}.csv"
        examples = read_ag_news_csv(path)
        counts = Counter(e.label for e in examples)
        per_class = tuple(counts.get(k, 0) for k in range(len(CLASSES)))
        info[split] = SplitInfo(split, path, len(examples), per_class, _md5_file(path))
    return info


def data_command(data_dir: str | Path | None = None, *, download: bool = False) -> int:
    """``python -m gru_lib data``: validate each split and print its counts; a split that is missing is
    reported as such (``--download`` fetches it), one that is not a readable file raises :class:`DataError`."""
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    for split in SPLITS:
        path = root / "ag_news" / f"{split}.csv"
        if not path.is_file():
            refuse_non_file(path)
    info = describe_ag_news(data_dir, download=download)
    for item in info.values():
        classes = ", ".join(f"{name} {n:,}" for name, n in zip(CLASSES, item.per_class))
        print(f"{item.path}: {item.summary()}; {classes}")
    for split in SPLITS:
        if split not in info:
            print(f"{root / 'ag_news' / f'{split}.csv'}: missing (pass --download to fetch the {split} split)")
    return 0
