"""The built site, checked in a real browser: every page of ``_build/html`` opened in headless Chromium.

Checks, on every page found in the built HTML (not a hand-written list): no console errors or uncaught exceptions,
no request leaving 127.0.0.1 (the site works offline), maths typeset by the MathJax served from the site (no raw
``$$``, no MathJax error), every image loaded and described (alt text, or a figure with a caption), every internal
link pointing at an existing file and anchor; and the search page finds "reset gate". A full-page screenshot of each
chapter and prose page goes to ``_build/screenshots/``; the figures of the run to ``_build/browser-report.json``.

Layout, at a 1280 px wide window, with every dropdown and collapsed cell opened (what a reader can open, a reader
sees): the text column is the content box of the theme's ``article.bd-article``. Two checks, both failures:
- *sticks out*: an element whose box extends past the column (reported once, at the outermost such element).
  An element inside a box that clips or scrolls (``overflow-x`` not ``visible``) is judged through that box;
- *needs sideways scrolling*: a box that clips or scrolls whose content is wider than the box (a code block with
  long lines, a wide table or output), and a display equation wider than its box. Scrolling keeps the page
  intact (the CSS of ``book/_static`` guarantees that much) but hides part of the equation or code from a reader
  who does not scroll, so it counts as too wide: split the equation (``aligned``), wrap the code (88 columns fit:
  the site's CSS sizes code to that), move wide output out of the reader's path.
Chapters 1 to 3 each show a diagram (an SVG of ``book/figures``, not a plot), and the site's highlighted code
shows the sources the book builds: ``def gru_cell_backward``, the layer's time loop ``def _scan_direction`` and,
in the classifier chapter, the training step's ``optimizer.step()``.

Run it after the book build (``make test`` does: ``make book``, then ``pytest tests/browser``). Outside
``make test`` it skips when the site or Chromium is missing; with ``GRU_BOOK_REQUIRE_SITE=1`` (set by ``make test``)
a missing site or browser is a failure. ``GRU_BOOK_SITE`` points it at another built site; ``CHROMIUM`` at another
browser binary (by default the system's ``chromium``, else one installed by ``playwright install chromium``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("GRU_BOOK_SITE", ROOT / "_build" / "html")).resolve()
BOOK_SOURCE = Path(os.environ.get("GRU_BOOK_SOURCE", ROOT)).resolve()
SCREENSHOTS = SITE.parent / "screenshots"
REPORT = SITE.parent / "browser-report.json"
REQUIRED = os.environ.get("GRU_BOOK_REQUIRE_SITE") == "1"

# Keep Chromium quiet and offline (no updates, sync, QUIC or background fetches).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Folders of the built site that hold assets, not pages.
ASSET_DIRS = ("_static", "_sources", "_images", "_sphinx_design_static")
PAGE_TIMEOUT_MS = 30_000


def _chromium() -> str | None:
    candidate = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return candidate if Path(candidate).is_file() else None


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (GRU_BOOK_REQUIRE_SITE=1: run `make book` first / install chromium)", pytrace=False)
    pytest.skip(reason)


_REFRESH = re.compile(r'<meta\s+http-equiv="refresh"\s+content="\d+;\s*url=([^"]+)"', re.IGNORECASE)


def site_pages() -> list[str]:
    """Every HTML page of the built site, as paths relative to its root ("book/intro.html", ...)."""
    return sorted(
        p.relative_to(SITE).as_posix()
        for p in SITE.rglob("*.html")
        if not p.relative_to(SITE).parts[0] in ASSET_DIRS
    )


def redirect_target(page_path: str) -> str | None:
    """The target of a page that only redirects (the site's index.html), else None."""
    html = (SITE / page_path).read_text(encoding="utf-8", errors="replace")
    match = _REFRESH.search(html)
    return match.group(1) if match and len(html) < 1000 else None


class _Ids(HTMLParser):
    """Collects the anchors a URL fragment can point at: every ``id`` and every ``<a name>``."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value and (key == "id" or (key == "name" and tag == "a")):
                self.ids.add(value)


@functools.cache
def anchors_of(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


@dataclass
class PageResult:
    page: str
    console_errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    math_elements: int = 0
    math_typeset: int = 0
    math_errors: int = 0
    raw_tex: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    column_px: int = 0
    sticks_out: list[str] = field(default_factory=list)
    scrolls: list[str] = field(default_factory=list)


# In the page: wait for every image (lazy ones made eager), then describe each.
_IMAGES_JS = """async () => {
  const imgs = Array.from(document.querySelectorAll('img'));
  await Promise.all(imgs.map(img => {
    img.loading = 'eager';
    if (img.complete) return null;
    return new Promise(done => {
      img.addEventListener('load', done); img.addEventListener('error', done); setTimeout(done, 10000);
    });
  }));
  return imgs.map(img => {
    const figure = img.closest('figure');
    const caption = figure ? figure.querySelector('figcaption') : null;
    return {src: img.getAttribute('src') || '', naturalWidth: img.naturalWidth,
            alt: (img.getAttribute('alt') || '').trim(),
            caption: caption ? caption.textContent.trim() : ''};
  });
}"""

# In the page: visible text outside code, where raw TeX would show if MathJax had not typeset it.
_PROSE_TEXT_JS = """() => {
  const body = document.querySelector('main') || document.body;
  const clone = body.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, mjx-assistive-mml').forEach(e => e.remove());
  return clone.innerText;
}"""

_MATH_JS = """async () => {
  const math = document.querySelectorAll('.math, span.math, div.math');
  if (math.length && window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await MathJax.startup.promise;
  }
  const typeset = Array.from(math).filter(e => e.querySelector('mjx-container')).length;
  return {math: math.length, typeset: typeset, errors: document.querySelectorAll('mjx-merror').length,
          mathjax: !!(window.MathJax && MathJax.version), version: window.MathJax ? (MathJax.version || '') : ''};
}"""


# In the page: open what a reader can open, then find what is wider than the text column (see the module's doc).
_LAYOUT_JS = """() => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
  const article = document.querySelector('article.bd-article');
  if (!article) return null;
  const box = article.getBoundingClientRect(), style = getComputedStyle(article);
  const left = box.left + parseFloat(style.paddingLeft), right = box.right - parseFloat(style.paddingRight);
  const clips = el => getComputedStyle(el).overflowX !== 'visible';
  const outside = r => r.left < left - 1 || r.right > right + 1;
  const describe = el => {
    const section = el.closest('section[id]');
    const text = Array.from((el.innerText || el.textContent || '').trim().replace(/\\s+/g, ' ')).slice(0, 60).join('');
    const cls = (el.getAttribute('class') || '').split(/\\s+/).filter(Boolean).slice(0, 2).join('.');
    return `<${el.tagName.toLowerCase()}${cls ? '.' + cls : ''}> in #${section ? section.id : '?'} "${text}"`;
  };
  const sticksOut = [], scrolls = [];
  for (const el of article.querySelectorAll('*')) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || getComputedStyle(el).visibility === 'hidden') continue;
    if (el.closest('mjx-assistive-mml')) continue;  // MathJax's off-screen copy for screen readers
    let clipped = false;
    for (let a = el.parentElement; a && a !== article; a = a.parentElement) if (clips(a)) { clipped = true; break; }
    if (!clipped && outside(r) && (el.parentElement === article || !outside(el.parentElement.getBoundingClientRect())))
      sticksOut.push(`${describe(el)}: ${Math.round(r.width)} px wide at ${Math.round(r.left - left)} px`);
    if (el.tagName === 'MJX-CONTAINER') {
      const math = el.querySelector(':scope > mjx-math');
      const wide = math ? math.getBoundingClientRect().width : 0;
      if (el.getAttribute('display') === 'true' && wide > el.clientWidth + 1)
        scrolls.push(`${describe(el)}: display equation ${Math.round(wide)} px in ${el.clientWidth} px`);
    } else if (!el.tagName.startsWith('MJX-') && !el.classList.contains('math') && clips(el)
               && getComputedStyle(el).display !== 'inline' && el.scrollWidth > el.clientWidth + 2) {
      scrolls.push(`${describe(el)}: ${el.scrollWidth} px of content in ${el.clientWidth} px`);
    }
  }
  return {column: Math.round(right - left), sticksOut: sticksOut, scrolls: scrolls};
}"""


def _visit(context, base: str, page_path: str) -> PageResult:
    result = PageResult(page_path)
    target = redirect_target(page_path)
    if target is not None:  # nothing to render: judge its one link
        result.links = [urljoin(urljoin(base, page_path), target)]
        return result
    page = context.new_page()
    base_host = urlsplit(base).netloc

    page.on("console", lambda msg: result.console_errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: result.console_errors.append(f"uncaught: {exc}"))
    page.on("requestfailed", lambda req: result.failed_requests.append(f"{req.url} ({req.failure})"))

    def guard(route) -> None:
        url = route.request.url
        if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != base_host:
            result.external_requests.append(url)
            route.abort()
        else:
            route.continue_()

    page.route("**/*", guard)
    try:
        page.goto(urljoin(base, page_path), wait_until="load", timeout=PAGE_TIMEOUT_MS)
        math = page.evaluate(_MATH_JS)
        result.math_elements, result.math_typeset, result.math_errors = math["math"], math["typeset"], math["errors"]
        text = page.evaluate(_PROSE_TEXT_JS)
        result.raw_tex = sorted({m for m in re.findall(r"\$\$|\\\(|\\\[|\\begin\{", text)})
        result.images = page.evaluate(_IMAGES_JS)
        result.links = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
        if page_path.startswith(("book/", "notebooks/")):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / f"{Path(page_path).stem}.png"), full_page=True)
        layout = page.evaluate(_LAYOUT_JS)  # after the screenshot: it opens every dropdown
        if layout:
            result.column_px, result.sticks_out, result.scrolls = (
                layout["column"], layout["sticksOut"], layout["scrolls"])
    finally:
        page.close()
    return result


@pytest.fixture(scope="session")
def visited(browser_context, server: str) -> dict[str, PageResult]:
    """Opens every page once; the tests below judge what was seen."""
    start = time.perf_counter()
    results = {path: _visit(browser_context, server, path) for path in site_pages()}
    seconds = time.perf_counter() - start
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "pages_visited": len(results),
                "images_checked": sum(len(r.images) for r in results.values()),
                "links_checked": sum(len(r.links) for r in results.values()),
                "pages_with_maths": sum(1 for r in results.values() if r.math_elements),
                "equations_typeset": sum(r.math_typeset for r in results.values()),
                "screenshots": len(list(SCREENSHOTS.glob("*.png"))) if SCREENSHOTS.is_dir() else 0,
                "text_column_px": sorted({r.column_px for r in results.values() if r.column_px}),
                "pages_with_elements_sticking_out": {p: len(r.sticks_out) for p, r in results.items() if r.sticks_out},
                "pages_with_sideways_scrolling": {p: len(r.scrolls) for p, r in results.items() if r.scrolls},
                # Every box at fault, for the page's author (the test's message shows the first 50).
                "too_wide": {p: r.sticks_out + r.scrolls for p, r in results.items() if r.sticks_out or r.scrolls},
                "seconds": round(seconds, 1),
            },
            indent=2,
        )
        + "\n"
    )
    return results


def _report(failures: list[str], what: str) -> None:
    assert not failures, f"{len(failures)} {what}:\n" + "\n".join(failures[:50])


def test_every_toc_entry_is_a_built_page() -> None:
    """The pages visited are discovered from the built files; this checks none of the toc's entries is missing."""
    if not SITE.is_dir():
        _missing(f"no built site at {SITE}")
    toc = yaml.safe_load((BOOK_SOURCE / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    pages = set(site_pages())
    missing = [f for f in files if f"{Path(f).with_suffix('')}.html" not in pages]
    _report(missing, "toc entries without a built page")
    assert len(files) >= 2


def test_no_console_errors(visited: dict[str, PageResult]) -> None:
    failures = [f"{p}: {e}" for p, r in visited.items() for e in r.console_errors]
    failures += [f"{p}: request failed {e}" for p, r in visited.items() for e in r.failed_requests
                 if not any(e.startswith(x) for x in r.external_requests)]
    _report(failures, "console errors or failed requests")


def test_works_offline(visited: dict[str, PageResult]) -> None:
    """Loading a page fetches nothing from outside the site (MathJax, fonts, scripts are all served locally)."""
    failures = [f"{p}: {u}" for p, r in visited.items() for u in r.external_requests]
    _report(failures, "requests that left the site")


def test_maths_is_typeset(visited: dict[str, PageResult]) -> None:
    with_maths = {p: r for p, r in visited.items() if r.math_elements}
    assert "book/intro.html" in with_maths, "the intro's equations were not found: is the maths markup unchanged?"
    failures = [f"{p}: {r.math_typeset} of {r.math_elements} equations typeset" for p, r in with_maths.items()
                if r.math_typeset < r.math_elements]
    failures += [f"{p}: {r.math_errors} MathJax errors" for p, r in visited.items() if r.math_errors]
    failures += [f"{p}: raw TeX in the visible text: {r.raw_tex}" for p, r in visited.items() if r.raw_tex]
    _report(failures, "pages with maths not typeset")


def test_mathjax_comes_from_the_site() -> None:
    """No page references a CDN for MathJax; the MathJax 3 they load is a file of the built site."""
    if not SITE.is_dir():
        _missing(f"no built site at {SITE}")
    failures, loaded = [], set()
    for path in site_pages():
        html = (SITE / path).read_text(encoding="utf-8")
        for src in re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', html, flags=re.IGNORECASE):
            if re.match(r"(https?:)?//", src):
                failures.append(f"{path}: {src}")
            else:
                loaded.add((SITE / path).parent.joinpath(src.split("?")[0]).resolve())  # drop Sphinx's ?v=checksum
        if re.search(r"cdn\.jsdelivr|cdnjs", html):
            failures.append(f"{path}: mentions a CDN")
    _report(failures, "pages that load MathJax from elsewhere")
    assert loaded, "no page loads MathJax"
    for script in loaded:
        assert script.is_file(), f"{script} is referenced but not in the site"
        assert "3." in re.search(r'VERSION\s*=\s*"([^"]+)"', script.read_text(errors="replace")).group(1)


def test_images_load_and_are_described(visited: dict[str, PageResult]) -> None:
    failures = []
    for p, r in visited.items():
        for img in r.images:
            if img["naturalWidth"] <= 0:
                failures.append(f"{p}: image did not load: {img['src']}")
            if not img["alt"] and not img["caption"]:
                failures.append(f"{p}: image without alt text or figure caption: {img['src']}")
    _report(failures, "image problems")


def test_internal_links_resolve(visited: dict[str, PageResult], server: str) -> None:
    host = urlsplit(server).netloc
    failures, checked = [], 0
    for p, r in visited.items():
        for href in r.links:
            url = urlsplit(href)
            if url.scheme not in ("http", "https") or url.netloc != host:
                continue
            checked += 1
            target = SITE / unquote(url.path).lstrip("/")
            if url.path.endswith("/") or target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                failures.append(f"{p}: {href} -> no such file")
            elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in anchors_of(target):
                failures.append(f"{p}: {href} -> no anchor #{url.fragment}")
    _report(failures, "broken internal links")
    assert checked > len(visited), "suspiciously few internal links found"


def test_search_finds_reset_gate(browser_context, server: str) -> None:
    page = browser_context.new_page()
    try:
        page.goto(urljoin(server, "search.html?q=reset+gate"), wait_until="load", timeout=PAGE_TIMEOUT_MS)
        page.wait_for_selector("#search-results ul.search li", timeout=PAGE_TIMEOUT_MS)
        hits = page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.href)")
    finally:
        page.close()
    assert any("glossary" in h for h in hits), f"the glossary (which defines the reset gate) is not among {hits}"


def test_chapters_have_screenshots(visited: dict[str, PageResult]) -> None:
    expected = {Path(p).stem for p in visited if p.startswith(("book/", "notebooks/"))}
    found = {p.stem for p in SCREENSHOTS.glob("*.png")}
    assert expected and expected <= found, f"missing screenshots: {sorted(expected - found)}"


def test_chapters_offer_download_and_launch_buttons(visited: dict[str, PageResult]) -> None:
    """Each chapter links its .ipynb (the download button) and opens on Binder and Colab (the launch buttons)."""
    chapters = {p: r for p, r in visited.items() if p.startswith("notebooks/")}
    failures = []
    for p, r in chapters.items():
        name = f"{Path(p).stem}.ipynb"
        wanted = {
            "download": lambda h: urlsplit(h).path.endswith(f"/_sources/notebooks/{name}"),
            "binder": lambda h: h.startswith("https://mybinder.org/") and name in h,
            "colab": lambda h: h.startswith("https://colab.research.google.com/github/gru-book/gru-book/") and name in h,
        }
        failures += [f"{p}: no {what} link" for what, ok in wanted.items() if not any(ok(h) for h in r.links)]
    _report(failures, "missing buttons")
    assert chapters, "no chapter pages were built"


def test_nothing_sticks_out_of_the_text_column(visited: dict[str, PageResult]) -> None:
    """At 1280 px no element (equation, code, table, figure, output) extends past the text column."""
    content = [p for p, r in visited.items() if p.startswith(("book/", "notebooks/"))]
    measured = [p for p in content if visited[p].column_px]
    assert measured == content, f"no text column (article.bd-article) found on {sorted(set(content) - set(measured))}"
    failures = [f"{p}: {e}" for p, r in visited.items() for e in r.sticks_out]
    _report(failures, "elements wider than the text column at 1280 px")


def test_nothing_needs_sideways_scrolling(visited: dict[str, PageResult]) -> None:
    """At 1280 px no code block, equation, table or output hides part of itself behind a horizontal scroll."""
    failures = [f"{p}: {e}" for p, r in visited.items() for e in r.scrolls]
    _report(failures, "boxes whose content is wider than the text column at 1280 px (scrolls or is cut)")


def test_first_chapters_show_a_diagram(visited: dict[str, PageResult]) -> None:
    """Chapters 1 to 3 each show a diagram: an SVG drawn for the book (book/figures), not a matplotlib plot."""
    drawn = {p.stem for p in (BOOK_SOURCE / "book" / "figures").glob("*.svg")}
    chapters = sorted(p for p in visited if re.match(r"notebooks/0[123]_", p))
    assert len(chapters) == 3, f"chapters 1 to 3 not found among the pages: {chapters}"

    def is_diagram(src: str) -> bool:  # Sphinx copies figures to _images/, adding a number to a repeated name
        name = Path(urlsplit(src).path).name
        stem = Path(name).stem
        return name.endswith(".svg") and (stem in drawn or re.sub(r"\d+$", "", stem) in drawn)

    failures = [f"{p}: no diagram from book/figures (images: {[i['src'] for i in visited[p].images]})"
                for p in chapters if not any(is_diagram(i["src"]) and i["naturalWidth"] > 0 for i in visited[p].images)]
    _report(failures, "chapters without a diagram")


class _HighlightedCode(HTMLParser):
    """The text of every highlighted code block (``<div class="highlight...">``) of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[str] = []
        self._depth = 0  # div nesting inside the current highlighted block

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "div":
            return
        if self._depth:
            self._depth += 1
        elif any(c == "highlight" or c.startswith("highlight-") for c in (dict(attrs).get("class") or "").split()):
            self._depth = 1
            self.blocks.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._depth:
            self._depth -= 1

    def handle_data(self, data: str) -> None:
        if self._depth:
            self.blocks[-1] += data


def highlighted_code(path: str) -> list[str]:
    parser = _HighlightedCode()
    parser.feed((SITE / path).read_text(encoding="utf-8", errors="replace"))
    return parser.blocks


def test_the_code_the_book_builds_is_shown() -> None:
    """The sources the chapters build are on the site, in highlighted code: the cell's hand-derived backward, the
    layer's time loop and (in the classifier chapter) the training step's optimiser step."""
    if not SITE.is_dir():
        _missing(f"no built site at {SITE}")
    code = {p: highlighted_code(p) for p in site_pages() if p.startswith("notebooks/")}
    assert code, "no chapter pages were built"
    wanted = {"def gru_cell_backward": code, "def _scan_direction": code,
              "optimizer.step()": {p: b for p, b in code.items() if "news_classifier" in p}}
    failures = [f"`{needle}` is in no highlighted code block of {sorted(pages) or 'the classifier chapter'}"
                for needle, pages in wanted.items() if not any(needle in b for bs in pages.values() for b in bs)]
    _report(failures, "sources not shown")
