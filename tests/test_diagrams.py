"""The book's diagrams (``book/figures/*.svg``): well-formed, self-contained, accessible, in the book's notation.

Every diagram is a hand-written SVG file. These tests check, for each one, that it parses as XML; has a
``<title>`` and a ``<desc>`` (the alt text's source); has a ``viewBox`` and a width that fits the text column
(<= 760 px); loads nothing from outside (no scripts, no images, no links other than ``#fragment``); uses a sans
font at >= 12 px; draws the gates in the book's three colours; and that every symbol it writes with a subscript
(``x_t``, ``h_{t-1}``, ``W_hn`` ...) belongs to the book's notation (chapter 1's equations, reset-after form, gate
order r | z | n). Finally, every diagram must be embedded by at least one chapter or book page.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "book" / "figures"
SVG = "{http://www.w3.org/2000/svg}"
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"

# The fixed file names (docs: chapter conventions, item 3) and the chapter each belongs to.
DIAGRAMS = {
    "gru_cell_gates.svg": 1,
    "gru_cell_candidate.svg": 1,
    "gru_cell_mix.svg": 1,
    "bptt_unrolled.svg": 2,
    "gru_stacked_bidirectional.svg": 3,
    "batching_strategies.svg": 4,
    "news_classifier.svg": 5,
    "fused_step.svg": 6,
    "scan_tree.svg": 7,
    "data_parallel.svg": 8,
}
CELL_DIAGRAMS = ("gru_cell_gates.svg", "gru_cell_candidate.svg", "gru_cell_mix.svg")
MAX_WIDTH = 760
MIN_FONT_PX = 12.0

# One colour per gate, the same in every diagram: (fill, stroke) of the classes gate-r, gate-z, gate-n.
GATE_COLOURS = {
    "gate-r": ("#dbeaf6", "#0072B2"),
    "gate-z": ("#fdebc8", "#E69F00"),
    "gate-n": ("#d3efe4", "#009E73"),
}


def _notation() -> frozenset[str]:
    """The book's symbols, spelt as the SVG text reads with subscripts marked: ``x_t``, ``h_{t-1}``, ``W_hn``.

    Chapter 1: r_t = σ(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr), z_t likewise, n_t = tanh(W_in x_t + b_in +
    r_t ⊙ (W_hn h_{t-1} + b_hn)), h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}; stacked weights W_ih, W_hh (r | z | n).
    Later chapters: h_0 ... h_T and their adjoints (ch. 2), h_n (ch. 3), the products GI, gh of FastGRU (ch. 6),
    the scan's pairs (a_t, b_t) (ch. 7), the per-rank gradients g_0, g_1 (ch. 8).
    """
    times = ["t", "t-1", "T", "T-1"] + [str(k) for k in range(9)]
    symbols = {f"{v}_{t}" for v in ("x", "h", "r", "z", "n", "a", "b") for t in times}
    symbols |= {f"{w}_{src}{gate}" for w in ("W", "b") for src in ("i", "h") for gate in "rzn"}
    symbols |= {"W_ih", "W_hh", "b_ih", "b_hh", "h_n", "s", "log_2"}
    symbols |= {f"{p}_{gate}" for p in ("GI", "gh") for gate in "rzn"}
    symbols |= {"g_0", "g_1", "a_s", "b_s"}
    return frozenset(symbols)


NOTATION = _notation()
# Spellings of other books or of the LSTM that must not appear: Cho/d2l's W_xz layout, a memory cell c_t.
FORBIDDEN = frozenset({"c_t", "c_t-1", "W_xr", "W_xz", "W_xh", "h~_t"})
# What a label drawn as a symbol (class "sym") may contain besides the notation.
OPERATORS = frozenset({"σ", "tanh", "⊙", "+", "−", "-", "(", ")", "1", "⋯", "L", "="})


def _svg_files() -> list[Path]:
    return sorted(FIGURES.glob("*.svg"))


@cache
def _tree(name: str) -> ET.Element:
    return ET.parse(FIGURES / name).getroot()


def _label(element: ET.Element) -> str:
    """The text of a ``<text>`` element, subscripts written ``_{...}``, superscripts ``^{...}`` (an underscore
    without a brace is a literal one, as in ``weight_ih``)."""
    parts = [element.text or ""]
    for child in element:
        inner = "".join(child.itertext())
        shift = child.get("baseline-shift", "")
        if shift == "sub":
            inner = inner.replace("−", "-")
            parts.append("_{" + inner + "}")
        elif shift == "super":
            parts.append("^{" + inner + "}")
        else:
            parts.append(inner)
        parts.append(child.tail or "")
    return re.sub(r"\s+", " ", "".join(parts)).strip()


def _labels(root: ET.Element) -> list[tuple[str, str]]:
    """(class, label) of every ``<text>`` element."""
    return [(t.get("class", ""), _label(t)) for t in root.iter(f"{SVG}text")]


def _subscripted(label: str) -> list[str]:
    """The symbols written with a subscript in ``label``, as ``x_{t}``, ``h_{t-1}``, ``W_{hn}``."""
    return [f"{base}_{{{index}}}" for base, index in re.findall(r"([A-Za-z]+)_\{([^}]*)\}", label)]


def _canonical(symbol: str) -> str:
    """``h_{t-1}`` and ``W_{hn}`` as the notation set spells them (braces dropped: ``h_t-1``, ``W_hn``)."""
    return symbol.replace("{", "").replace("}", "")


def _style(root: ET.Element) -> str:
    return "\n".join("".join(s.itertext()) for s in root.iter(f"{SVG}style"))


@pytest.fixture(params=sorted(DIAGRAMS), ids=lambda name: name.removesuffix(".svg"))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_the_figure_folder_holds_exactly_the_named_diagrams() -> None:
    found = {p.name for p in _svg_files()}
    missing, extra = sorted(set(DIAGRAMS) - found), sorted(found - set(DIAGRAMS))
    assert not missing and not extra, f"book/figures: missing {missing}, unexpected {extra}"


def test_parses_and_has_title_and_desc(name: str) -> None:
    root = _tree(name)
    assert root.tag == f"{SVG}svg", f"{name}: root element is {root.tag}, not an SVG"
    title = root.find(f"{SVG}title")
    desc = root.find(f"{SVG}desc")
    assert title is not None and len((title.text or "").split()) >= 4, f"{name}: no <title> of a few words"
    assert desc is not None and len((desc.text or "").split()) >= 20, f"{name}: no <desc> of at least 20 words"


def test_fits_the_text_column(name: str) -> None:
    root = _tree(name)
    view_box = root.get("viewBox")
    assert view_box is not None, f"{name}: no viewBox"
    x0, y0, width, height = (float(v) for v in view_box.replace(",", " ").split())
    assert width > 0 and height > 0, f"{name}: empty viewBox {view_box}"
    declared = root.get("width")
    assert declared is not None, f"{name}: no width"
    assert float(declared.removesuffix("px")) <= MAX_WIDTH, f"{name}: width {declared} > {MAX_WIDTH}"
    assert width <= MAX_WIDTH, f"{name}: viewBox width {width} > {MAX_WIDTH}"


def test_loads_nothing_external(name: str) -> None:
    root = _tree(name)
    for element in root.iter():
        tag = element.tag.removeprefix(SVG)
        assert tag not in ("script", "image", "foreignObject", "iframe"), f"{name}: contains <{tag}>"
        for key, value in element.attrib.items():
            assert not key.lower().startswith("on"), f"{name}: event handler {key} on <{tag}>"
            if key in ("href", XLINK_HREF):
                assert value.startswith("#"), f"{name}: <{tag}> links to {value!r}"
            for url in re.findall(r"url\(([^)]*)\)", value):
                assert url.strip("'\" ").startswith("#"), f"{name}: {key}={value!r} loads {url!r}"
    style = _style(root)
    assert "@import" not in style and "@font-face" not in style, f"{name}: the style loads fonts or sheets"
    for url in re.findall(r"url\(([^)]*)\)", style):
        assert url.strip("'\" ").startswith("#"), f"{name}: the style loads {url!r}"
    text = (FIGURES / name).read_text(encoding="utf-8")
    assert not re.search(r"(?:https?|file|ftp):(?!//www\.w3\.org/)", text), f"{name}: names an external URL"


def test_text_is_sans_and_at_least_12px(name: str) -> None:
    root = _tree(name)
    style = _style(root)
    families = re.findall(r"font-family\s*:\s*([^;}]+)", style) + [
        e.get("font-family", "") for e in root.iter() if e.get("font-family")
    ]
    assert families and all("sans-serif" in f for f in families), f"{name}: font families {families}"
    sizes = [float(v) for v in re.findall(r"font-size\s*:\s*([\d.]+)px", style)]
    sizes += [float(e.get("font-size", "").removesuffix("px")) for e in root.iter() if e.get("font-size")]
    assert sizes, f"{name}: no font size set"
    assert min(sizes) >= MIN_FONT_PX, f"{name}: text at {min(sizes)} px, below {MIN_FONT_PX}"


def test_gates_keep_their_colours(name: str) -> None:
    root = _tree(name)
    style = re.sub(r"\s+", "", _style(root))
    used = {c for e in root.iter() for c in e.get("class", "").split()}
    for gate, (fill, stroke) in GATE_COLOURS.items():
        if gate in used:
            rule = re.search(r"\." + gate + r"\{([^}]*)\}", style)
            assert rule is not None, f"{name}: class {gate} is used but not defined"
            assert f"fill:{fill}" in rule.group(1) and f"stroke:{stroke}" in rule.group(1), (
                f"{name}: {gate} is {rule.group(1)}, the book's colours are fill {fill}, stroke {stroke}"
            )


def test_symbols_belong_to_the_notation(name: str) -> None:
    root = _tree(name)
    for cls, label in _labels(root):
        for symbol in _subscripted(label):
            assert _canonical(symbol) in NOTATION, f"{name}: {symbol!r} in {label!r} is not in the book's notation"
            assert _canonical(symbol) not in FORBIDDEN, f"{name}: {symbol!r} is another book's spelling"
        if "sym" in cls.split():
            tokens = re.findall(r"[A-Za-z]+(?:_\{[^}]*\})?|\S", label)
            strange = [t for t in tokens if _canonical(t) not in NOTATION and t not in OPERATORS]
            assert not strange, f"{name}: symbol label {label!r} has {strange}, outside the notation"


def test_the_cell_in_three_steps_names_every_state_and_gate() -> None:
    symbols = {_canonical(s) for n in CELL_DIAGRAMS for _, label in _labels(_tree(n)) for s in _subscripted(label)}
    needed = {"r_t", "z_t", "n_t", "h_t", "h_t-1", "x_t"}
    assert needed <= symbols, f"the three cell diagrams lack {sorted(needed - symbols)}"
    # Reset after: the candidate's diagram says so, and multiplies r_t with the product W_hn h_{t-1} + b_hn.
    candidate = " ".join(label for _, label in _labels(_tree("gru_cell_candidate.svg")))
    assert "reset after" in candidate and "W_{hn} h_{t-1} + b_{hn}" in candidate


def test_the_notation_check_can_fail() -> None:
    assert _subscripted("σ(W_{xz} x_{t} + c_{t-1}), weight_ih") == ["W_{xz}", "x_{t}", "c_{t-1}"]
    assert _canonical("W_{xz}") not in NOTATION and _canonical("c_{t-1}") not in NOTATION
    assert _canonical("c_{t}") in FORBIDDEN
    assert _canonical(_subscripted("h_{t-1}")[0]) in NOTATION


def test_every_diagram_is_embedded_by_a_page(name: str) -> None:
    pages = list((ROOT / "notebooks").glob("*.ipynb")) + list((ROOT / "book").glob("*.md"))
    embedded = [p.name for p in pages if f"figures/{name}" in p.read_text(encoding="utf-8")]
    assert embedded, f"{name} (chapter {DIAGRAMS[name]}) is not embedded by any notebook or book page"
