"""The "Try it" page (book/try_it.md) in a real browser: what the reader types is classified in the page with the
numbers of ``python -m gru_lib predict --json``.

Over HTTP (the site served from 127.0.0.1, every other request aborted and reported), the test types at least 50
headlines of the AG News test split into the page, key by key, and a few tricky texts (entities, quotes, ``;``
and ``:``, digits, Unicode, markup, no token at all) and whole test rows with their feed debris; for each, the page's four
probabilities must match the command line's within 1e-4 with the same topic, the token ids must equal
``gru_lib.text.numericalize``'s and the gates drawn must match ``NewsClassifier.gate_trace`` within 1e-4. The
first result must appear within a second of the first key press. From ``file://`` the page must work the same.
The server and browser are those of ``test_site.py``; like it, this skips without a built site or Chromium unless
``GRU_BOOK_REQUIRE_SITE=1``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from urllib.parse import urljoin, urlsplit

import torch
from test_site import PAGE_TIMEOUT_MS, ROOT, SITE, _missing

PAGE = "book/try_it.html"
HEADLINES = 50
TOLERANCE = 1e-4
FIRST_RESULT_SECONDS = 1.0
TRICKY = [
    "He said: \"Stocks; bonds\" rose 3.5% (twice!) - isn't it?",
    "AT&amp;T &lt;b&gt;wins&lt;/b&gt; #151; again &#8220;quoted&#8221; &eacute;t&eacute; &notit; &amp &#x41;",
    "Google#39;s shares #36;85 quot;IPOquot; dwindling\\band &lt;A HREF=\"http://x.com\"&gt;link&lt;/A&gt;",
    "Café owners in São Paulo protest; 1,000 march: ΟΔΟΣ ΣΟΦΟΣ İstanbul 🚀 #١٢; done",
    "tabs\tand\u00a0nbsp\u2009thin\u3000wide \u2018single\u2019 \u201cdouble\u201d \u2014 dash\u2026",
    ";;::",
    " ".join(["word"] * 80) + " Sports",
]


def _test_rows() -> list:
    from gru_lib.data import load_ag_news
    from gru_lib.errors import DataError

    try:
        return load_ag_news("test", download=False)
    except DataError as error:
        _missing(f"no AG News test split ({error})")


def _texts() -> tuple[list[str], list[str]]:
    """(headlines typed key by key, texts filled in at once): test-split titles spread over the split, then
    tricky texts and whole test rows whose text carries the feed's debris."""
    rows = _test_rows()
    step = len(rows) // HEADLINES
    titles = [rows[i].title for i in range(0, step * HEADLINES, step)]
    debris = [r.text for r in rows if any(m in r.text for m in ("#39;", "&lt;", "\\", "quot;", "#36;"))][:8]
    return titles, TRICKY + debris


def _predict(texts: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gru_lib", "predict", "--json", "--", *texts], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONHASHSEED": "0"})


def _python(texts: list[str]) -> list[dict | None]:
    """What ``python -m gru_lib predict --json`` prints for each of ``texts`` (the shipped model, no --model);
    None for a text with no words after cleaning, which the command refuses (checked here too)."""
    from gru_lib.shipped import load_shipped
    from gru_lib.text import tokenize

    clean = load_shipped()[2].clean_text
    wordless = [t for t in texts if not tokenize(t, clean=clean)]
    for text in wordless:
        refused = _predict([text])
        assert refused.returncode == 2 and "no words left after cleaning" in refused.stderr, refused.stderr
    done = _predict([t for t in texts if t not in wordless])
    assert done.returncode == 0, done.stderr
    results = iter(json.loads(line) for line in done.stdout.splitlines())
    return [None if t in wordless else next(results) for t in texts]


def _python_gates(texts: list[str]) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    from gru_lib.shipped import load_shipped
    from gru_lib.text import numericalize

    model, vocab, config, _ = load_shipped()
    ids = numericalize(texts, vocab, max_len=config.max_len, clean=config.clean_text)
    return [(seq, model.gate_trace(torch.tensor(seq))._asdict()) for seq in ids]


_READ_JS = """() => {
  const root = document.getElementById('try-it'), last = window.GRU_BOOK_TRY_IT.last();
  return {text: root.dataset.text, topic: document.getElementById('try-it-probs').dataset.topic,
          probabilities: Object.fromEntries(Array.from(document.querySelectorAll('.try-it-topic'),
                                                       r => [r.dataset.topic, Number(r.dataset.probability)])),
          ids: last.ids, z: last.gates.z.map(a => Array.from(a)), r: last.gates.r.map(a => Array.from(a))};
}"""


def _open(context, url: str) -> tuple[object, list[str], list[str]]:
    """A page at ``url`` with the network blocked: any request that is not to 127.0.0.1 or a file is aborted
    and listed; console errors are listed too."""
    page = context.new_page()
    outside, errors = [], []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

    def guard(route) -> None:
        parts = urlsplit(route.request.url)
        if parts.scheme == "file" or parts.hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(url, wait_until="load", timeout=PAGE_TIMEOUT_MS)
    return page, outside, errors


def _enter(page, text: str, *, keys: bool) -> dict:
    box = page.locator("#try-it-input")
    if keys:
        box.fill("")
        box.press_sequentially(text)
    else:
        box.fill(text)
    page.wait_for_function("t => document.getElementById('try-it').dataset.text === t", arg=text,
                           timeout=PAGE_TIMEOUT_MS)
    return page.evaluate(_READ_JS)


def _compare(seen: dict, expected: dict, ids: list[int], gates: dict[str, torch.Tensor]) -> list[str]:
    """What differs between the page and Python for one text (empty when they agree)."""
    label = repr(expected["text"][:60])
    diff = max(abs(seen["probabilities"][k] - v) for k, v in expected["probabilities"].items())
    problems = [f"{label}: probabilities differ by {diff:.2e}"] if diff > TOLERANCE else []
    if seen["topic"] != expected["topic"]:
        problems.append(f"{label}: topic {seen['topic']} in the page, {expected['topic']} in Python")
    if seen["ids"] != ids:
        problems.append(f"{label}: token ids {seen['ids'][:12]} in the page, {ids[:12]} in Python")
    else:
        for gate in ("z", "r"):
            gap = (torch.tensor(seen[gate], dtype=torch.float64) - gates[gate].double()).abs().max().item()
            if gap > TOLERANCE:
                problems.append(f"{label}: gate {gate} differs by {gap:.2e}")
    return problems


def test_the_page_computes_what_python_computes(browser_context, server: str) -> None:
    if not (SITE / PAGE).is_file():
        _missing(f"no {PAGE} in the built site")
    typed, filled = _texts()
    texts = typed + filled
    expected, traces = _python(texts), _python_gates(texts)
    assert len(expected) == len(texts) >= HEADLINES and any(e is None for e in expected)
    page, outside, errors = _open(browser_context, urljoin(server, PAGE))
    try:
        box = page.locator("#try-it-input")
        box.fill("")
        page.wait_for_function("() => document.getElementById('try-it').dataset.text === ''")
        box.focus()
        started = time.perf_counter()
        page.keyboard.press(typed[0][0])
        page.wait_for_function("t => document.getElementById('try-it').dataset.text === t", arg=typed[0][0],
                               timeout=PAGE_TIMEOUT_MS)
        first_result = time.perf_counter() - started
        problems, largest = [], 0.0
        for i, text in enumerate(texts):
            seen = _enter(page, text, keys=i < len(typed))
            if expected[i] is None:  # no words: the page names no topic, as the command refuses the text
                if seen["topic"] or seen["probabilities"]:
                    problems.append(f"{text!r}: the page names a topic for a text with no words")
                continue
            problems += _compare(seen, expected[i], *traces[i])
            largest = max(largest, *(abs(seen["probabilities"][k] - v)
                                     for k, v in expected[i]["probabilities"].items()))
    finally:
        page.close()
    print(f"{len(texts)} texts ({len(typed)} typed key by key): largest difference {largest:.2e}; "
          f"first result {1000 * first_result:.0f} ms after the first key")
    assert not outside, f"the page asked the network for {outside}"
    assert not errors, f"console errors: {errors}"
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:30])
    assert first_result < FIRST_RESULT_SECONDS, f"the first result took {first_result:.2f} s after typing"


def test_the_page_works_from_file(browser_context) -> None:
    """Opened as a file (no server): the scripts load through <script src> and the page answers."""
    if not (SITE / PAGE).is_file():
        _missing(f"no {PAGE} in the built site")
    text = "Rebels and government sign ceasefire after peace talks"
    (expected,), ((ids, gates),) = _python([text]), _python_gates([text])
    page, outside, errors = _open(browser_context, (SITE / PAGE).resolve().as_uri())
    try:
        seen = _enter(page, text, keys=True)
    finally:
        page.close()
    assert not outside and not errors, (outside, errors)
    assert not _compare(seen, expected, ids, gates)
