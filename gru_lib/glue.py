"""``glue``: hand a computed value to the book's prose, with or without Jupyter Book.

In the book's build, ``glue`` is myst-nb's: the value is stored in the cell's output and ``{glue}`name```
in the prose shows it, so every number in the text comes from the code that ran. In a reader's plain
Jupyter (no myst-nb installed) it simply shows the value (IPython's ``display``, or ``print`` outside a
kernel), or nothing when ``display=False``.
"""

from __future__ import annotations

from typing import Any

try:  # myst-nb is a build tool: the book needs it, a reader's notebook does not.
    from myst_nb import glue as _myst_glue
except ImportError:
    _myst_glue = None

__all__ = ["glue", "SIGNIFICANT_DIGITS"]

# A glued float keeps this many significant digits: more than any format in the prose shows (at most four),
# fewer than the digits in which processors disagree (another CPU sums in another order and changes the last
# bits of a float64), so the stored value, which strict nbval compares, is the same on every CPU.
SIGNIFICANT_DIGITS = 6


def glue(name: str, variable: Any, display: bool = True) -> None:
    """Store ``variable`` under ``name`` for the prose (myst-nb), or show it when myst-nb is absent. A NumPy
    scalar is stored as the Python number it holds: NumPy 2 writes ``np.float64(0.25)`` as its text, which a
    format such as ``{glue:text}`name:.2f``` cannot read. A float is stored rounded to
    :data:`SIGNIFICANT_DIGITS` significant digits."""
    if type(variable).__module__ == "numpy" and hasattr(variable, "item") and getattr(variable, "ndim", 1) == 0:
        variable = variable.item()
    if isinstance(variable, float):
        variable = float(f"{variable:.{SIGNIFICANT_DIGITS}g}")
    if _myst_glue is not None:
        _myst_glue(name, variable, display=display)
        return
    if not display:
        return
    try:
        from IPython.display import display as show
    except ImportError:  # a plain Python script: no kernel to display rich output
        show = print
    show(variable)
