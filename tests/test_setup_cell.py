"""The first code cell of every chapter installs gru_lib where it is missing (Colab, Binder, a fresh Jupyter).

Every notebook starts with the same hidden cell (id ``setup-gru-lib``, tag ``remove-cell``: not on the site, kept
in the downloaded .ipynb). When gru_lib is importable it does nothing and prints nothing; otherwise it runs
``pip install`` of ``$GRU_LIB_PIP_SPEC`` or of the repository that ``_config.yml`` names (``repository.url``), at
``main`` in the repository and at the built commit in the site's downloads (the publishing workflow stamps it;
``tests/test_workflow.py`` checks that). torch is not named: Colab's preinstalled torch satisfies the package's
range and stays."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

CANONICAL = '''\
# Installs gru_lib, the book's library, when this notebook runs outside the book's environment
# (Colab, Binder, a fresh Jupyter). Set GRU_LIB_PIP_SPEC to install another copy (a local checkout, say).
import importlib, importlib.util, os, subprocess, sys

if importlib.util.find_spec("gru_lib") is None:
    spec = os.environ.get("GRU_LIB_PIP_SPEC", "gru_lib @ git+{url}@{ref}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", spec], check=True)
    importlib.invalidate_caches()'''


def repository_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def accepted_refs() -> set[str]:
    """``main`` (what the repository and the launch buttons hold); in the publishing workflow, after the stamp
    step, the commit being built."""
    sha = os.environ.get("GITHUB_SHA", "")
    return {"main"} | ({sha} if re.fullmatch(r"[0-9a-f]{40}", sha) else set())


def setup_cell(path: Path) -> dict:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")


def source(cell: dict) -> str:
    text = cell["source"]
    return text if isinstance(text, str) else "".join(text)


def test_there_are_chapters() -> None:
    assert len(NOTEBOOKS) >= 8, f"expected the eight chapters in {ROOT / 'notebooks'}, found {len(NOTEBOOKS)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_is_the_setup_cell(path: Path) -> None:
    cell = setup_cell(path)
    text = source(cell)
    allowed = [CANONICAL.format(url=repository_url(), ref=ref) for ref in sorted(accepted_refs())]
    assert text in allowed, (
        f"{path.name}: the first code cell is not the canonical setup cell (tests/test_setup_cell.py CANONICAL, "
        f"installing from {repository_url()}); it starts with {text[:80]!r}"
    )
    assert cell.get("id") == "setup-gru-lib", f"{path.name}: setup cell id is {cell.get('id')!r}"
    assert cell.get("metadata", {}).get("tags") == ["remove-cell"], f"{path.name}: setup cell tags"
    assert cell.get("outputs") == [], f"{path.name}: the stored run of the setup cell printed something"


def _run_setup(tmp_path: Path, *, importable: bool, spec: str | None) -> subprocess.CompletedProcess:
    """Run the canonical cell in a fresh interpreter with ``pip install`` replaced by a recorder (and, for the
    missing case, ``find_spec("gru_lib")`` answering None): nothing is installed."""
    calls = tmp_path / "calls.json"
    prelude = f'''
import importlib.util, json, subprocess
_real_find_spec = importlib.util.find_spec
if {not importable!r}:
    importlib.util.find_spec = lambda name, *a: None if name == "gru_lib" else _real_find_spec(name, *a)
def _record(args, **kwargs):
    open({str(calls)!r}, "w").write(json.dumps({{"args": args, "check": kwargs.get("check")}}))
subprocess.run = _record
'''
    env = {k: v for k, v in os.environ.items() if k != "GRU_LIB_PIP_SPEC"}
    if spec is not None:
        env["GRU_LIB_PIP_SPEC"] = spec
    code = prelude + CANONICAL.format(url=repository_url(), ref="main")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def _recorded(tmp_path: Path) -> dict | None:
    calls = tmp_path / "calls.json"
    return json.loads(calls.read_text()) if calls.exists() else None


def test_does_nothing_and_prints_nothing_when_gru_lib_is_importable(tmp_path: Path) -> None:
    done = _run_setup(tmp_path, importable=True, spec=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    assert _recorded(tmp_path) is None, "pip was called although gru_lib is importable"


@pytest.mark.parametrize("spec", [None, "/home/reader/gru-book"])
def test_installs_when_gru_lib_is_missing(tmp_path: Path, spec: str | None) -> None:
    done = _run_setup(tmp_path, importable=False, spec=spec)
    assert done.returncode == 0, done.stderr
    expected = spec or f"gru_lib @ git+{repository_url()}@main"
    assert _recorded(tmp_path) == {"args": [sys.executable, "-m", "pip", "install", "--quiet", expected],
                                   "check": True}


def test_default_address_names_the_configured_repository() -> None:
    """The address pip installs from is the repository of _config.yml (github.com/<owner>/<name>)."""
    url = repository_url()
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), f"_config.yml repository.url: {url!r}"
    for path in NOTEBOOKS:
        match = re.search(r'"gru_lib @ git\+(https://[^@"]+)@([\w.-]+)"', source(setup_cell(path)))
        assert match, f"{path.name}: no default install address in the setup cell"
        assert match.group(1) == url, f"{path.name}: installs from {match.group(1)}, _config.yml names {url}"
