"""Every chapter gives the reader the same frame (``notebooks/*.ipynb``, the conventions every chapter follows).

For each chapter notebook, checked on its cells as committed (executed):

- the setup cell is the first code cell (id ``setup-gru-lib``, tag ``remove-cell``), the same in every chapter; the
  next code cell imports ``glue`` from ``gru_lib.glue`` and starts the clock (``_chapter_start``);
- the opening box: right under the ``# Title`` of the first markdown cell, an ``{admonition} In this chapter``
  (class ``tip``) with 3 to 5 things the reader will be able to do, ``**Prerequisites:**`` (with a link after the
  first chapter) and ``**Time:** about N minutes`` to read (N near the prose words / 200) and the running time
  glued as ``run_seconds``;
- the last code cell glues ``run_seconds`` (tags ``remove-cell``, ``nbval-ignore-output``), and was executed;
- a ``## Summary`` with 4 to 7 bullets and a ``Next:`` line with a link;
- a ``## Exercises`` section with 4 to 6 ``exercise-start`` blocks labelled ``ch<N>-ex1`` ... in order, at least
  two starting with ``**Predict, then run.**``, each with a ``solution-start <label>`` of class ``dropdown`` whose
  code cells (at least one) were executed and stored their outputs, closed by ``solution-end``;
- no code line longer than 88 characters, in code cells and in the library sources shown with ``literalinclude``
  (which must resolve: file and ``:pyobject:`` exist); cells that only call ``glue`` are hidden (``remove-cell``);
- the chapter's diagram(s) from ``book/figures/`` embedded as a figure with alt text.

``<N>`` is the notebook's number without leading zeros (``05_news_classifier`` -> ``ch5``). These tests fail while
a chapter lacks its frame; each failure names the notebook and what is missing.
"""

from __future__ import annotations

import ast
import json
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The chapters (01_...), then the appendices (A1_...): both follow the same frame.
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb")) + sorted((ROOT / "notebooks").glob("A[0-9]*.ipynb"))
MAX_LINE = 88
SETUP_ID = "setup-gru-lib"

# The diagrams each chapter embeds (book/figures/), by the chapter's name without its number.
DIAGRAMS = {
    "gru_cell": ["gru_cell_gates.svg", "gru_cell_candidate.svg", "gru_cell_mix.svg"],
    "bptt": ["bptt_unrolled.svg"],
    "gru_layer": ["gru_stacked_bidirectional.svg"],
    "text_pipeline": ["batching_strategies.svg"],
    "news_classifier": ["news_classifier.svg"],
    "fast_gru": ["fused_step.svg"],
    "parallel_scan": ["scan_tree.svg"],
    "scaling_out": ["data_parallel.svg"],
}

# A MyST directive: opening fence (``` or :::, any length), {name}, argument, then its :option: lines.
_DIRECTIVE = r"^(?P<fence>`{{3,}}|:{{3,}})\{{{name}\}}[ \t]*(?P<arg>[^\n]*)\n(?P<opts>(?:[ \t]*:[\w-]+:[^\n]*\n?)*)"


def directives(name: str, text: str) -> list[re.Match]:
    return list(re.finditer(_DIRECTIVE.format(name=re.escape(name)), text, re.MULTILINE))


def option(match: re.Match, key: str) -> str | None:
    found = re.search(rf"^[ \t]*:{re.escape(key)}:[ \t]*(.*)$", match.group("opts"), re.MULTILINE)
    return found.group(1).strip() if found else None


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


@cache
def cells_of(path: Path) -> tuple[dict, ...]:
    return tuple(json.loads(path.read_text(encoding="utf-8"))["cells"])


def code_cells(path: Path) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(cells_of(path)) if c["cell_type"] == "code"]


def markdown_cells(path: Path) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(cells_of(path)) if c["cell_type"] == "markdown"]


def chapter_number(path: Path) -> str:
    return path.stem.split("_", 1)[0].lstrip("0") or "0"


def glued_names(cell: dict) -> set[str]:
    return {o.get("metadata", {}).get("scrapbook", {}).get("name") for o in cell.get("outputs", [])} - {None}


def fail(path: Path, problems: list[str]) -> None:
    if problems:
        pytest.fail(f"{path.name}:\n  " + "\n  ".join(problems), pytrace=False)


chapter = pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)


def test_chapters_are_found() -> None:
    assert len(CHAPTERS) >= 8, f"expected the book's chapters in notebooks/, found {[p.name for p in CHAPTERS]}"


# ---- setup and imports -----------------------------------------------------------------------------------------


@chapter
def test_setup_cell_comes_first_then_the_imports(path: Path) -> None:
    cells = code_cells(path)
    problems = []
    if not cells or cells[0][1].get("id") != SETUP_ID:
        problems.append(f"the first code cell is not the setup cell (id {SETUP_ID!r})")
    elif "remove-cell" not in tags(cells[0][1]):
        problems.append("the setup cell lacks the tag remove-cell")
    if len(cells) > 1:
        imports = source(cells[1][1])
        if "from gru_lib.glue import glue" not in imports:
            problems.append("the imports cell (second code cell) lacks `from gru_lib.glue import glue`")
        if not re.search(r"^_chapter_start\s*=\s*time\.perf_counter\(\)", imports, re.MULTILINE):
            problems.append("the imports cell does not start the clock: `_chapter_start = time.perf_counter()`")
    if any(re.search(r"\bmyst_nb\b", source(c)) for _, c in cells):
        problems.append("a code cell uses myst_nb (glue comes from gru_lib.glue)")
    fail(path, problems)


def test_every_chapter_has_the_same_setup_cell() -> None:
    sources = {p.name: source(code_cells(p)[0][1]) for p in CHAPTERS if code_cells(p)}
    reference = sources.get(CHAPTERS[0].name)
    differ = sorted(name for name, text in sources.items() if text != reference)
    assert not differ, f"setup cell differs from {CHAPTERS[0].name}'s in: {differ}"


# ---- the opening box -------------------------------------------------------------------------------------------


def prose_words(path: Path) -> int:
    """Words a reader reads: markdown cells without code blocks, directive options and display maths."""
    words = 0
    for _, cell in markdown_cells(path):
        text = re.sub(r"^(`{3,})[^\n]*\n.*?^\1[ \t]*$", " ", source(cell), flags=re.MULTILINE | re.DOTALL)
        text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.DOTALL)
        text = re.sub(r"^[ \t]*:[\w-]+:.*$", " ", text, flags=re.MULTILINE)
        words += len(re.findall(r"[A-Za-z][\w'-]*", text))
    return words


@chapter
def test_opening_box(path: Path) -> None:
    markdown = markdown_cells(path)
    if not markdown:
        fail(path, ["no markdown cell"])
    first = source(markdown[0][1])
    lines = first.splitlines()
    problems = []
    if not lines or not lines[0].startswith("# "):
        problems.append("the first markdown cell does not start with the `# Title`")
    boxes = [m for m in directives("admonition", first) if m.group("arg").strip() == "In this chapter"]
    if not boxes:
        fail(path, problems + ["no `{admonition} In this chapter` box in the first markdown cell"])
    box = boxes[0]
    after_title = first[len(lines[0]):box.start()] if lines else ""
    if after_title.strip():
        problems.append("the opening box is not right under the title (text between them)")
    end = re.search(rf"^{re.escape(box.group('fence'))}[ \t]*$", first[box.end():], re.MULTILINE)
    if not end:
        fail(path, problems + ["the opening box is never closed"])
    body = first[box.end(): box.end() + end.start()]
    if option(box, "class") != "tip":
        problems.append("the opening box lacks `:class: tip`")
    able = re.search(r"You will be able to:?\s*\n((?:[ \t]*[-*] .*\n?(?:[ \t]{2,}\S.*\n?)*)+)", body)
    bullets = len(re.findall(r"^[-*] ", able.group(1), re.MULTILINE)) if able else 0
    if not 3 <= bullets <= 5:
        problems.append(f"'You will be able to:' has {bullets} bullets (want 3 to 5)")
    prerequisites = re.search(r"\*\*Prerequisites:\*\*(.*?)(?:\n\s*\n|\Z)", body, re.DOTALL)
    if not prerequisites:
        problems.append("no `**Prerequisites:**` in the opening box")
    elif path != CHAPTERS[0] and not re.search(r"\]\(|\{doc\}", prerequisites.group(1)):
        problems.append("the prerequisites link no earlier chapter")
    time_line = re.search(r"\*\*Time:\*\*(.*?)(?:\n\s*\n|\Z)", body, re.DOTALL)
    if not time_line:
        problems.append("no `**Time:**` in the opening box")
    else:
        minutes = re.search(r"(\d+)\s+minutes?", time_line.group(1))
        if not minutes:
            problems.append("the time gives no reading time in minutes")
        else:
            expected = prose_words(path) / 200
            stated = int(minutes.group(1))
            if abs(stated - expected) > max(3.0, 0.35 * expected):
                problems.append(f"reading time {stated} min, but the prose has {prose_words(path)} words "
                                f"(~{expected:.0f} min at 200 words a minute)")
        if not re.search(r"\{glue:text\}`run_seconds[`:]", time_line.group(1)):
            problems.append("the time does not show the measured {glue:text}`run_seconds`")
    fail(path, problems)


@chapter
def test_last_code_cell_glues_the_running_time(path: Path) -> None:
    cells = code_cells(path)
    index, last = cells[-1]
    problems = []
    if not re.search(r"""glue\(\s*["']run_seconds["']""", source(last)):
        problems.append(f"the last code cell (cell {index}) does not glue 'run_seconds'")
    for tag in ("remove-cell", "nbval-ignore-output"):
        if tag not in tags(last):
            problems.append(f"the last code cell (cell {index}) lacks the tag {tag}")
    if "run_seconds" not in glued_names(last):
        problems.append(f"the last code cell (cell {index}) has no stored run_seconds output (not executed?)")
    fail(path, problems)


# ---- summary ---------------------------------------------------------------------------------------------------


@chapter
def test_summary(path: Path) -> None:
    for _, cell in markdown_cells(path):
        text = source(cell)
        heading = re.search(r"^## Summary[ \t]*$", text, re.MULTILINE)
        if heading:
            break
    else:
        fail(path, ["no `## Summary` heading"])
    section = re.split(r"^#{1,2} ", text[heading.end():], maxsplit=1, flags=re.MULTILINE)[0]
    problems = []
    bullets = len(re.findall(r"^[-*] ", section, re.MULTILINE))
    if not 4 <= bullets <= 7:
        problems.append(f"the summary has {bullets} bullets (want 4 to 7)")
    if not re.search(r"^Next:.*(?:\]\(|\{doc\})", section, re.MULTILINE):
        problems.append("the summary does not end with a `Next: [...](...)` line")
    fail(path, problems)


# ---- exercises -------------------------------------------------------------------------------------------------


def _exercise_body(text: str, start: re.Match) -> str:
    """The exercise's text: after the start directive's closing fence, up to ``exercise-end`` (or the cell's end)."""
    rest = text[start.end():]
    close = re.match(rf"[ \t]*{re.escape(start.group('fence'))}[ \t]*\n?", rest)
    rest = rest[close.end():] if close else rest
    end = re.search(r"^(`{3,}|:{3,})\{exercise-end\}", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def exercises(path: Path) -> list[dict]:
    """Each exercise in order: label, cell, body, and its solution (cell, options, code cells, end cell)."""
    cells = cells_of(path)
    found: list[dict] = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = source(cell)
        for start in directives("exercise-start", text):
            found.append({"label": option(start, "label"), "cell": index, "body": _exercise_body(text, start),
                          "solution": None})
        for start in directives("solution-start", text):
            label = start.group("arg").strip()
            code, end = [], None
            for later in range(index + 1, len(cells)):
                if cells[later]["cell_type"] == "code":
                    code.append((later, cells[later]))
                elif re.search(r"^(`{3,}|:{3,})\{solution-end\}", source(cells[later]), re.MULTILINE):
                    end = later
                    break
                elif directives("solution-start", source(cells[later])) or directives(
                        "exercise-start", source(cells[later])):
                    break
            owner = [e for e in found if e["label"] == label]
            target = owner[-1] if owner else {"label": label, "cell": None, "body": "", "solution": None}
            if not owner:
                found.append(target)
            target["solution"] = {"cell": index, "class": option(start, "class"), "code": code, "end": end}
    return found


@chapter
def test_exercises(path: Path) -> None:
    number = chapter_number(path)
    problems = []
    heading = [i for i, c in markdown_cells(path) if re.search(r"^## Exercises[ \t]*$", source(c), re.MULTILINE)]
    if not heading:
        problems.append("no `## Exercises` heading")
    found = exercises(path)
    real = [e for e in found if e["cell"] is not None]
    if not 4 <= len(real) <= 6:
        problems.append(f"{len(real)} exercise-start blocks (want 4 to 6)")
    labels = [e["label"] for e in real]
    expected = [f"ch{number}-ex{k}" for k in range(1, len(real) + 1)]
    if labels != expected:
        problems.append(f"exercise labels {labels}, want {expected}")
    if heading and real and min(e["cell"] for e in real) < heading[0]:
        problems.append("an exercise comes before the `## Exercises` heading")
    predict = sum(1 for e in real if e["body"].lstrip().startswith("**Predict, then run.**"))
    if predict < 2:
        problems.append(f"{predict} exercises start with '**Predict, then run.**' (want at least 2)")
    for e in found:
        label, solution = e["label"], e["solution"]
        if e["cell"] is None:
            problems.append(f"solution-start {label}: no exercise with that label")
            continue
        if solution is None:
            problems.append(f"{label}: no `solution-start {label}`")
            continue
        if solution["class"] != "dropdown":
            problems.append(f"{label}: the solution lacks `:class: dropdown` (hidden on the site)")
        if solution["end"] is None:
            problems.append(f"{label}: the solution (cell {solution['cell']}) is not closed by `solution-end`")
        if not solution["code"]:
            problems.append(f"{label}: the solution has no code cell")
        unexecuted = [i for i, c in solution["code"] if c.get("execution_count") is None]
        if unexecuted:
            problems.append(f"{label}: solution code cells {unexecuted} were not executed")
        if solution["code"] and not any(c.get("outputs") for _, c in solution["code"]):
            problems.append(f"{label}: no solution code cell stored an output (the reader sees no result)")
    fail(path, problems)


# ---- what the reader sees at 1280 px ---------------------------------------------------------------------------


@chapter
def test_code_lines_fit_the_column(path: Path) -> None:
    """The setup cell is exempt: it is hidden on the site (remove-cell) and must stay as it is."""
    long = []
    for index, cell in code_cells(path):
        if cell.get("id") == SETUP_ID:
            continue
        for number, line in enumerate(source(cell).splitlines(), start=1):
            if len(line) > MAX_LINE:
                long.append(f"cell {index} line {number}: {len(line)} characters")
    if long:
        fail(path, [f"{len(long)} code lines longer than {MAX_LINE} characters:"] + long[:20]
             + ([f"... and {len(long) - 20} more"] if len(long) > 20 else []))


def shown_sources(path: Path) -> list[tuple[int, re.Match]]:
    return [(i, m) for i, c in markdown_cells(path) for m in directives("literalinclude", source(c))]


_READER_OPTIONS = ("pyobject", "lines", "start-at", "start-after", "end-at", "end-before", "dedent")


def shown_text(path: Path, include: re.Match) -> str:
    """The text a ``literalinclude`` shows, selected as Sphinx selects it (pyobject, start/end, lines, dedent).

    Raises ValueError naming what does not resolve (a missing file, a renamed object, a marker not found)."""
    from types import SimpleNamespace

    from sphinx.directives.code import LiteralIncludeReader

    file = (path.parent / include.group("arg").strip()).resolve()
    if not file.is_file():
        raise ValueError(f"no file {include.group('arg').strip()}")
    options: dict[str, object] = {}
    for key in _READER_OPTIONS:
        value = option(include, key)
        if value is not None:
            value = value[1:-1] if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"" else value
            options[key] = int(value) if key == "dedent" and value else value
    try:
        text, _ = LiteralIncludeReader(str(file), options, SimpleNamespace(source_encoding="utf-8")).read()
    except ValueError as error:  # Sphinx's messages: "Object named 'x' not found in include file", ...
        raise ValueError(f"{file.name}: {error}") from None
    return text


@chapter
def test_shown_sources_resolve_and_fit_the_column(path: Path) -> None:
    problems = []
    for index, include in shown_sources(path):
        label = f"{include.group('arg').strip()}:{option(include, 'pyobject') or ''}"
        try:
            text = shown_text(path, include)
        except ValueError as error:
            problems.append(f"cell {index}: literalinclude {label} does not resolve: {error}")
            continue
        lines = text.splitlines()
        long = [n for n, line in enumerate(lines, start=1) if len(line) > MAX_LINE]
        if long:
            problems.append(f"cell {index}: {label}: shown lines {long} (counted from the first line shown) are "
                            f"longer than {MAX_LINE}, e.g. {lines[long[0] - 1].strip()[:60]!r}")
    fail(path, problems)


def _only_glue_calls(code: str) -> bool:
    code = "\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    return bool(body) and all(
        isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and isinstance(s.value.func, ast.Name)
        and s.value.func.id == "glue" for s in body)


@chapter
def test_cells_that_only_glue_are_hidden(path: Path) -> None:
    shown = [index for index, cell in code_cells(path)
             if _only_glue_calls(source(cell)) and "remove-cell" not in tags(cell)]
    fail(path, [f"cells {shown} only call glue(...) but are not tagged remove-cell"] if shown else [])


@chapter
def test_diagrams_are_embedded_with_alt_text(path: Path) -> None:
    wanted = DIAGRAMS.get(path.stem.split("_", 1)[-1], [])
    if not wanted:
        pytest.skip(f"no diagram is assigned to {path.stem}")
    figures = {Path(m.group("arg").strip()).name: m for _, c in markdown_cells(path)
               for m in directives("figure", source(c))}
    problems = []
    for name in wanted:
        figure = figures.get(name)
        if figure is None:
            problems.append(f"no ```{{figure}} ../book/figures/{name}``` directive")
        elif not (option(figure, "alt") or "").strip():
            problems.append(f"the figure {name} has no :alt: text")
        elif not (path.parent / figure.group("arg").strip()).resolve().is_file():
            problems.append(f"the figure {figure.group('arg').strip()} does not exist")
    fail(path, problems)


def test_the_book_shows_its_key_sources() -> None:
    """The code the chapters build is on the page: the cell, its backward, the layer's time loop, a training step
    (with the optimiser step) and the scan, each read from the library with literalinclude."""
    shown: dict[str, str] = {}
    for path in CHAPTERS:
        for _, include in shown_sources(path):
            pyobject = option(include, "pyobject")
            try:
                text = shown_text(path, include)
            except ValueError:
                continue  # reported by test_shown_sources_resolve_and_fit_the_column
            if pyobject:
                name = f"{Path(include.group('arg').strip()).name}:{pyobject}"
                shown[name] = shown.get(name, "") + text
    missing = [name for name in ("cell.py:gru_cell", "bptt.py:gru_cell_backward", "layer.py:GRU._scan_direction")
               if name not in shown]
    if not any("optimizer.step()" in text for text in shown.values()):
        missing.append("a training step with `optimizer.step()`")
    if not any(name.startswith(("scan.py:", "mingru.py:")) for name in shown):
        missing.append("the scan (from gru_lib/scan.py or mingru.py)")
    assert not missing, f"not shown in any chapter (literalinclude with :pyobject:): {missing}"


def test_the_frame_parsers_find_a_well_formed_exercise(tmp_path: Path) -> None:
    """The checks can pass: a minimal notebook with one exercise in the conventions' shape is parsed whole."""
    cells = [
        {"cell_type": "markdown", "source": "## Exercises\n"},
        {"cell_type": "markdown", "source": "```{exercise-start}\n:label: ch9-ex1\n```\n"
                                            "**Predict, then run.** What is 1 + 1?\n```{exercise-end}\n```\n"},
        {"cell_type": "markdown", "source": "```{solution-start} ch9-ex1\n:class: dropdown\n```\n"},
        {"cell_type": "code", "source": "1 + 1", "execution_count": 1, "outputs": [{"output_type": "execute_result"}]},
        {"cell_type": "markdown", "source": "Two.\n```{solution-end}\n```\n"},
    ]
    notebook = tmp_path / "09_x.ipynb"
    notebook.write_text(json.dumps({"cells": cells}), encoding="utf-8")
    [exercise] = exercises(notebook)
    assert exercise["label"] == "ch9-ex1" and exercise["body"].startswith("**Predict, then run.**")
    assert exercise["solution"]["class"] == "dropdown" and exercise["solution"]["end"] == 4
    assert [i for i, _ in exercise["solution"]["code"]] == [3]
    assert _only_glue_calls('glue("a", 1, display=False)\nglue("b", 2)') and not _only_glue_calls("x = 1")


def test_shown_text_selects_what_sphinx_shows(tmp_path: Path) -> None:
    """The line check reads the lines the page shows: the object, cut at the markers, dedented."""
    (tmp_path / "lib.py").write_text("class A:\n    def f(self):\n        x = 1\n        return x\n\n"
                                     "def g():\n    pass\n", encoding="utf-8")
    text = '```{literalinclude} lib.py\n:pyobject: A.f\n:start-at: "x = 1"\n:dedent: 8\n```\n'
    [include] = directives("literalinclude", text)
    assert shown_text(tmp_path / "09_x.ipynb", include) == "x = 1\nreturn x\n"
    [missing] = directives("literalinclude", "```{literalinclude} lib.py\n:pyobject: A.h\n```\n")
    with pytest.raises(ValueError, match="A.h"):
        shown_text(tmp_path / "09_x.ipynb", missing)
