"""Prose lint: what the reader reads speaks to the reader, states no number known to be wrong, and shows only
glued values that exist.

Reader prose is every markdown cell of ``notebooks/*.ipynb`` and every ``book/*.md`` page (the comments of code
cells too, for the words of the project's own making: they are shown on the site). Three checks:

1. **Words of the project's making** (``PROJECT_WORDS``): the book never speaks of issues, goals set for it, the
   machine it was built on, or what could not be downloaded "here"; the reader has none of these.
2. **Constants known to be wrong** (``WRONG_CLAIMS``): statements a review found false or computed by no cell.
   Each rule says why, so a failure explains itself; a rule can be limited to some files.
3. **Glue names**: every ``{glue}`` / ``{glue:text}`` / ``{glue:md}`` / ``{glue:figure}`` name in a notebook's
   prose is glued by a code cell of that notebook, in its stored outputs (what the book shows). A typo, or a
   ``glue`` call that was never executed, fails here instead of as an empty spot on the page.

Add a rule when a review finds a new kind of slip; keep the reason to one line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAGES = sorted((ROOT / "book").glob("*.md"))


@dataclass(frozen=True)
class Rule:
    pattern: str
    reason: str
    files: str = "*"  # fnmatch on the path relative to the repository root
    context: str | None = None  # the same cell/page must also match this (case-insensitive) for the rule to apply

    def hits(self, text: str) -> list[str]:
        if self.context and not re.search(self.context, text, re.IGNORECASE):
            return []
        flat = re.sub(r"\s+", " ", text)  # a phrase may be wrapped over lines
        return [m.group(0) for m in re.finditer(self.pattern, flat, re.IGNORECASE)]


PROJECT_WORDS = [
    Rule(r"\bthe issues?\b", "the reader has no issue tracker: say what the problem or the requirement is"),
    Rule(r"\bissue's\b", "the reader has no issue tracker"),
    Rule(r"\bissues? #?\d+\b", "the reader has no issue tracker"),
    Rule(r"\bwhere (?:this|the) book (?:is|was|gets) built\b", "the reader's machine is not the build machine"),
    Rule(r"\bbuilt here\b", "'here' is the reader's page, not the machine that built it"),
    Rule(r"\bmachine (?:that|which) (?:built|builds) (?:this|the) book\b", "speak of this run, not the build"),
    Rule(r"\bmachine (?:this|the) book (?:is|was) built on\b", "speak of this run, not the build"),
    Rule(r"\b(?:can ?not|can't|could not|couldn't) be (?:downloaded|fetched|reached|installed) (?:here|where)\b",
         "the reader may well download it; say what the book uses and how to get the rest"),
    Rule(r"\bno [\w -]{0,40}can be (?:downloaded|fetched) here\b", "the reader may well download it"),
    Rule(r"\bgoals? set\b|\bset (?:the )?goals?\b", "goals set for the project mean nothing to the reader"),
    Rule(r"\bthe (?:helper|engineer|session|workplace|sandbox)s?\b", "words of how the book was made, not for it"),
    Rule(r"SOURCE\.md", "a provenance file of the development data: the reader does not have it"),
]

WRONG_CLAIMS = [
    Rule(r"2\s*\^\s*\{?\s*-\s*9\s*\}?|2\s*\*\*\s*\(?-9", "bfloat16 keeps 8 significant bits: its relative "
         "rounding error is up to 2^-8, not 2^-9", context=r"bf16|bfloat16"),
    Rule(r"\ball (?:6|six) gradients\b", "chapter 6 compares five gradients, not six", files="notebooks/06_*"),
    Rule(r"\bimpossible to paralleli[sz]e\b|\bimpossible for a GRU\b", "nonlinear recurrences can be evaluated "
         "in parallel over time by Newton/fixed-point iterations with a scan (DEER, Lim et al. 2024): say what "
         "is true (no exact associative step, so no direct scan)"),
    Rule(r"\b(?:can ?not|can't) be paralleli[sz]ed (?:over|in|across|along) time\b", "DEER (Lim et al. 2024) "
         "evaluates nonlinear recurrences in parallel over time by iteration: say 'not by a direct scan'"),
    Rule(r"spectral radius[^.]{0,60}3\.5\b", "never measured, and it does not fit the measured growth per step: "
         "measure and glue it, or cut it"),
    Rule(r"\bmedian of (?:2|two)\b", "sorted(x)[len(x) // 2] of two runs is the larger one, not a median"),
    Rule(r"\bmatch(?:es|ing)? word2vec\b", "Levy, Goldberg and Dagan (2015) show PPMI-SVD is competitive with "
         "word2vec on some tasks once hyperparameters are matched, not that it matches it"),
    Rule(r"\blargest single improvement we measured\b", "no cell computes a ranking of improvements"),
    Rule(r"\bautocast leaves[^.]{0,30}float32\b", "a TorchFunctionMode probe cannot see inside the fused "
         "operator: say what was observed (the outputs' dtype), not what happens inside"),
    Rule(r"\b(?:delete|remove|drop)[sd]?\s+`\"`,\s*`;`|\b(?:delete|remove|drop)[sd]?\s+`;`"
         r"|`;`\s+and\s+`:`\s+(?:are|get)\s+(?:deleted|removed|dropped)",
         "the tokenizer turns `;` and `:` into spaces, it does not delete them", files="notebooks/04_*"),
]


@dataclass(frozen=True)
class Text:
    where: str  # "notebooks/05_news_classifier.ipynb, cell 8" or "book/faq.md"
    path: str  # relative to the repository root
    text: str
    is_code_comment: bool = False


def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else source


def reader_texts() -> list[Text]:
    texts = []
    for nb in NOTEBOOKS:
        rel = nb.relative_to(ROOT).as_posix()
        for index, cell in enumerate(json.loads(nb.read_text(encoding="utf-8"))["cells"]):
            source = _cell_source(cell)
            if cell["cell_type"] == "markdown":
                texts.append(Text(f"{rel}, cell {index}", rel, source))
            elif cell["cell_type"] == "code" and cell.get("id") != "setup-gru-lib":
                comments = "\n".join(line for line in source.splitlines() if line.lstrip().startswith("#"))
                texts.append(Text(f"{rel}, cell {index} (code comments)", rel, comments, is_code_comment=True))
    for page in PAGES:
        rel = page.relative_to(ROOT).as_posix()
        texts.append(Text(rel, rel, page.read_text(encoding="utf-8")))
    return texts


def _violations(rules: list[Rule], texts: list[Text]) -> list[str]:
    found = []
    for text in texts:
        for rule in rules:
            if not fnmatch(text.path, rule.files):
                continue
            for hit in rule.hits(text.text):
                found.append(f"{text.where}: {hit!r} -- {rule.reason}")
    return found


def test_the_corpus_is_found() -> None:
    assert NOTEBOOKS, "no notebooks/*.ipynb found"
    assert any(p.name == "intro.md" for p in PAGES), "book/intro.md not found"


def test_no_words_of_the_projects_making() -> None:
    found = _violations(PROJECT_WORDS, reader_texts())
    assert not found, f"{len(found)} passages speak of how the book was made, not to the reader:\n" + "\n".join(found)


def test_no_claims_known_to_be_wrong() -> None:
    texts = [t for t in reader_texts() if not t.is_code_comment]
    found = _violations(WRONG_CLAIMS, texts)
    assert not found, f"{len(found)} statements known to be wrong:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("rules", "text", "expected"),
    [
        (PROJECT_WORDS, "The issue's goal for this layer", 2),
        (PROJECT_WORDS, "the full file could not be fetched where this book is built", 2),
        (PROJECT_WORDS, "No pretrained word vectors can be downloaded here, and", 1),
        (PROJECT_WORDS, "the goal set for FastGRU", 1),
        (PROJECT_WORDS, "A GRU reads vectors; the problem is speed.", 0),
        (WRONG_CLAIMS, "bfloat16 rounds with a relative error of up to $2^{-9}$", 1),
        (WRONG_CLAIMS, "float16 rounds with a relative error of up to $2^{-9}$", 0),
        (WRONG_CLAIMS, "bf16 keeps 8 bits: an error of up to $2^{-8}$", 0),
        (WRONG_CLAIMS, "why the GRU itself cannot be parallelised over time", 1),
        (WRONG_CLAIMS, "it is impossible to parallelize a GRU over time", 1),
        (WRONG_CLAIMS, "spectral radius about $6/\\sqrt 3 \\approx 3.5$", 1),

    ],
)
def test_the_rules_catch_what_they_name(rules: list[Rule], text: str, expected: int) -> None:
    """The lint can fail: each rule set finds the slips it was written for, and leaves plain prose alone."""
    found = _violations(rules, [Text("sample", "notebooks/07_x.ipynb", text)])
    assert len(found) == expected, found


def test_the_tokenizer_rule_tells_deleting_from_spacing() -> None:
    rule = next(r for r in WRONG_CLAIMS if "tokenizer" in r.reason)
    assert rule.hits('rules: lowercase; delete `"`, `;` and `:`; split on whitespace')
    assert not rule.hits('`"` deleted, `;` and `:` turned into spaces')


# {glue}`name`, {glue:text}`name:.2f`, {glue:md}`name`, and the directives ```{glue:figure} name / {glue:math} name.
_GLUE_ROLE = re.compile(r"\{glue(?::(?:text|md|any|figure|math))?\}`([^`]+)`")
_GLUE_DIRECTIVE = re.compile(r"^\s*(?:```+|:::+)\s*\{glue(?::(?:figure|math|md|any))?\}\s+(\S+)", re.MULTILINE)


def glue_names_used(markdown: str) -> set[str]:
    """The glue keys a text refers to: ``name`` of ``{glue:text}`name:.2f```, ``nb.ipynb::name`` kept whole."""
    names = set()
    for match in _GLUE_ROLE.finditer(markdown):
        key = match.group(1).strip()
        if "::" in key:
            document, _, rest = key.partition("::")
            names.add(f"{document}::{rest.split(':')[0]}")
        else:
            names.add(key.split(":")[0].strip())
    names.update(m.group(1) for m in _GLUE_DIRECTIVE.finditer(markdown))
    return names


def glued_in_outputs(notebook: dict) -> set[str]:
    """Names glued by the notebook's code cells, read from their stored outputs (what the book build uses)."""
    names = set()
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            record = output.get("metadata", {}).get("scrapbook")
            if record and "name" in record:
                names.add(record["name"])
    return names


def test_glue_name_parser() -> None:
    text = "{glue:text}`acc:.1f`% and {glue}`n_rows` and {glue:md}`table` and\n```{glue:figure} fig_a\n```"
    assert glue_names_used(text) == {"acc", "n_rows", "table", "fig_a"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_glued_name_in_the_prose_is_glued_by_the_notebook(notebook: Path) -> None:
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    glued = glued_in_outputs({"cells": cells})
    code = "\n".join(_cell_source(c) for c in cells if c["cell_type"] == "code")
    problems = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for name in sorted(glue_names_used(_cell_source(cell)) - glued):
            if "::" in name:
                continue  # another notebook's value: checked by the pages test below
            if re.search(rf"""glue\(\s*["']{re.escape(name)}["']""", code):
                problems.append(f"cell {index}: `{name}` is glued in the code but not in the stored outputs: "
                                "re-execute the notebook")
            else:
                problems.append(f"cell {index}: `{name}` is glued by no code cell (a typo?)")
    assert not problems, f"{notebook.name}: {len(problems)} glue names without a value:\n" + "\n".join(problems)


def test_glue_in_prose_pages_names_a_notebook_value() -> None:
    """A book/*.md page has no code cells: a glued value there must come from a notebook (``nb.ipynb::name``)."""
    problems = []
    for page in PAGES:
        for name in sorted(glue_names_used(page.read_text(encoding="utf-8"))):
            document, sep, key = name.partition("::")
            if not sep:
                problems.append(f"{page.name}: `{name}` has no notebook to come from (write path.ipynb::{name})")
                continue
            source = (page.parent / document).resolve()
            if not source.is_file():
                problems.append(f"{page.name}: `{name}`: no notebook {source}")
            elif key not in glued_in_outputs(json.loads(source.read_text(encoding="utf-8"))):
                problems.append(f"{page.name}: `{name}`: {source.name} glues no `{key}`")
    assert not problems, "\n".join(problems)
