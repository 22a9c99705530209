"""Fixtures the browser tests share: one HTTP server for the built site and one Chromium, for the whole session.

They live here, not in a test module, so that every module gets the same session-scoped instances: a second
``sync_playwright()`` started while the first is running fails ("Sync API inside the asyncio loop")."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_site import CHROMIUM_FLAGS, SITE, _chromium, _missing


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="session")
def server() -> Iterator[str]:
    if not (SITE / "index.html").is_file():
        _missing(f"no built site at {SITE}")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def browser_context(server: str, tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # The system's Chromium; else one that `playwright install chromium` downloaded (where there is a network).
        executable = _chromium()
        if executable is None and Path(playwright.chromium.executable_path).is_file():
            executable = playwright.chromium.executable_path
        if executable is None:
            _missing("no Chromium (apt-get install chromium, or python -m playwright install chromium)")
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh --user-data-dir
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 900},
        )
        try:
            yield context
        finally:
            context.close()
