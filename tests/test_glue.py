"""gru_lib.glue: myst-nb's glue when the build tool is installed, a plain display in a reader's Jupyter.

The module picks its backend at import, so each test re-imports it with ``myst_nb`` made present (a stand-in
that records its calls) or absent (``sys.modules["myst_nb"] = None`` makes ``import myst_nb`` fail)."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator

import pytest

import gru_lib.glue


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    importlib.reload(gru_lib.glue)  # back to the backend of the real environment


def _reload_with(monkeypatch: pytest.MonkeyPatch, myst_nb: types.ModuleType | None) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "myst_nb", myst_nb)
    return importlib.reload(gru_lib.glue)


def _recorder(calls: list) -> types.ModuleType:
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda name, variable, display=True: calls.append((name, variable, display))
    return fake


@pytest.mark.parametrize("display", [True, False])
def test_with_myst_nb_the_call_is_handed_over(monkeypatch: pytest.MonkeyPatch, display: bool) -> None:
    calls: list = []
    module = _reload_with(monkeypatch, _recorder(calls))
    module.glue("acc", 0.91, display=display)
    assert calls == [("acc", 0.91, display)]


def test_without_myst_nb_the_value_is_displayed(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _reload_with(monkeypatch, None)
    assert module._myst_glue is None
    shown: list = []
    monkeypatch.setattr("IPython.display.display", shown.append)
    module.glue("acc", 0.91)
    module.glue("hidden", 3, display=False)
    assert shown == [0.91]


def test_without_myst_nb_or_ipython_it_prints(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    module = _reload_with(monkeypatch, None)
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    module.glue("rows", "10,880")
    module.glue("hidden", 3, display=False)
    assert capsys.readouterr().out == "10,880\n"


def test_the_real_backend_is_myst_nb_in_the_development_environment() -> None:
    """The book's build needs myst-nb's glue: requirements.txt installs Jupyter Book, hence myst-nb."""
    pytest.importorskip("myst_nb")
    import myst_nb

    assert gru_lib.glue._myst_glue is myst_nb.glue


def test_a_numpy_scalar_is_stored_as_its_python_number(monkeypatch) -> None:  # noqa: ANN001
    import numpy as np

    from gru_lib import glue as glue_module

    stored = {}
    monkeypatch.setattr(glue_module, "_myst_glue", lambda name, value, display: stored.update({name: value}))
    glue_module.glue("x", np.float64(0.25), display=False)
    glue_module.glue("n", np.int64(3), display=False)
    assert stored == {"x": 0.25, "n": 3} and type(stored["x"]) is float and type(stored["n"]) is int


def test_no_stored_glue_value_is_a_numpy_repr() -> None:
    """The book formats glued numbers from their stored text: 'np.float64(...)' cannot be formatted."""
    import json
    from pathlib import Path

    bad = []
    for path in sorted((Path(__file__).parents[1] / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            for output in cell.get("outputs", []):
                text = output.get("data", {}).get("application/papermill.record/text/plain", "")
                if "np." in text:
                    bad.append(f"{path.name}: {text[:60]}")
    assert not bad, bad


def test_floats_are_stored_at_six_significant_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPUs that disagree in a float64's last bits store the same value (what strict nbval compares)."""
    calls: list = []
    module = _reload_with(monkeypatch, _recorder(calls))
    module.glue("a", 0.14585248874808837)
    module.glue("b", 0.14585248874808834)
    module.glue("c", 123456789.0)
    module.glue("n", 7)
    assert [value for _, value, _ in calls] == [0.145852, 0.145852, 123457000.0, 7]
    assert type(calls[-1][1]) is int
