"""A reader's path: a chapter's .ipynb alone, in a fresh Python with only a Jupyter kernel, runs to the end.

This is what a reader who downloads a notebook (or opens it in Colab, Binder, their own Jupyter) does: nothing
of this repository is importable, so the notebook's first cell (see tests/test_setup_cell.py) must install
gru_lib with every dependency it needs, and every later cell must run with what that installed.

The reader test proper (``test_chapter_runs_where_a_reader_opens_it``) builds a virtual environment and runs
whole chapters, minutes of work, so it runs when ``GRU_BOOK_READER_TEST=1`` (``make test`` sets it) and is
skipped otherwise. The other tests here are quick checks of the package that reader installs."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SHARED_DATA = ROOT.parent / "shared" / "data"
READER_ENV = "GRU_BOOK_READER_TEST"
# Chapters the reader test runs: the first, the layer, and the classifier (data, training, scikit-learn).
READER_CHAPTERS = ("01_gru_cell", "03_gru_layer", "05_news_classifier")


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _dependencies() -> dict[str, Requirement]:
    reqs = [Requirement(line) for line in _project()["dependencies"]]
    return {metadata_name(r.name): r for r in reqs}


def _extras() -> set[str]:
    """Distributions named by pyproject's optional extras (``pip install 'gru_lib[peers]'``)."""
    extras = _project().get("optional-dependencies", {})
    return {metadata_name(Requirement(line).name) for lines in extras.values() for line in lines}


def metadata_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dev_torch_pin() -> str:
    """The first line of requirements.txt: the exact torch of the development environment."""
    first = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    pin = next(line for line in first if line.strip() and not line.startswith("#"))
    assert re.fullmatch(r"torch==2\.13\.0", pin.strip()), f"requirements.txt pins torch as {pin!r}"
    return pin.strip()


# ---------------------------------------------------------------------------------------------------------
# The package a reader installs


def test_requirements_keep_the_exact_torch_first() -> None:
    lines = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert re.match(r"^torch==2\.13\.0$", lines[0])


@pytest.mark.parametrize("version", ["2.6.0", "2.8.0", "2.10.1", "2.13.0"])
def test_torch_range_keeps_a_preinstalled_torch(version: str) -> None:
    """Colab ships a recent torch: the package's range must accept it, so pip does not replace it."""
    torch_req = _dependencies()["torch"]
    assert Version(version) in torch_req.specifier, f"torch {version} is outside {torch_req}"
    assert not torch_req.specifier.contains("2.0.0"), "the library needs torch 2.4 or later"


def test_every_dependency_is_a_range_not_a_pin() -> None:
    for name, req in _dependencies().items():
        assert req.specifier, f"{name} has no version range"
        assert not any(spec.operator in ("==", "===") for spec in req.specifier), (
            f"{req} pins one version: a reader's environment (Colab) would have it replaced"
        )


def _imports(code: str) -> set[str]:
    """Top-level modules that ``code`` imports (IPython magics, ``%...`` lines, are dropped first)."""
    code = "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in code.splitlines())
    names: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _third_party_imports() -> dict[str, set[str]]:
    """Module -> where it is imported, over gru_lib's modules and every notebook's code cells."""
    found: dict[str, set[str]] = {}
    sources = [(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8")) for p in (ROOT / "gru_lib").glob("*.py")]
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        sources.append((path.name, code))
    for where, code in sources:
        for module in _imports(code) - set(sys.stdlib_module_names) - {"gru_lib", "__future__"}:
            found.setdefault(module, set()).add(where)
    return found


# Modules a Jupyter kernel brings (ipykernel depends on IPython), and the build tool glue uses when present.
KERNEL_PROVIDED = {"IPython"}
OPTIONAL = {"myst_nb": "gru_lib/glue.py"}


def test_every_import_is_a_declared_dependency() -> None:
    """What the library and the chapters import is in pyproject's dependencies (or comes with any kernel). A
    library module may also import a distribution of an optional extra (the export and the peer benchmark); a
    chapter may not, since a reader's kernel has only the base dependencies."""
    declared, extras = set(_dependencies()), _extras()
    distributions = metadata.packages_distributions()
    missing = []
    for module, where in sorted(_third_party_imports().items()):
        if module in KERNEL_PROVIDED or (module in OPTIONAL and where == {OPTIONAL[module]}):
            continue
        dists = {metadata_name(d) for d in distributions.get(module, [module])}
        if dists & extras and all(w.startswith("gru_lib/") for w in where):
            continue
        if not dists & declared:
            missing.append(f"{module} ({', '.join(sorted(where))})")
    assert not missing, f"imported but not in pyproject.toml's dependencies: {'; '.join(missing)}"


def test_importing_the_package_assumes_no_linux() -> None:
    """Importing every gru_lib module reads no /proc or /sys file and loads no C library by name: those are
    Linux-only, and a reader on macOS or Windows must get a working import (a measurement that needs Linux
    checks for it when it runs)."""
    probe = r'''
import importlib, pkgutil, sys
bad = []
def hook(event, args):
    if event not in ("open", "ctypes.dlopen"):
        return
    target = str(args[0]) if args else ""
    if event == "open" and not target.startswith(("/proc", "/sys")):
        return
    frame = sys._getframe(1)  # the code that opens: gru_lib's own, not a library it imports
    while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
        frame = frame.f_back
    if frame is not None and "gru_lib" in frame.f_code.co_filename.replace("\\", "/").split("/"):
        bad.append(f"{event} {target} from {frame.f_code.co_filename}:{frame.f_lineno}")
sys.addaudithook(hook)
import gru_lib
for info in pkgutil.iter_modules(gru_lib.__path__):
    if info.name != "__main__":  # the command line, which runs on import
        importlib.import_module(f"gru_lib.{info.name}")
print("\n".join(bad))
'''
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"Linux-only access at import:\n{done.stdout}"


def test_no_chapter_turns_the_download_off() -> None:
    """A chapter that reads AG News must find it (GRU_LIB_DATA, the cache) or download it on a fresh machine:
    load_ag_news and describe_ag_news download by default, so no notebook passes download=False."""
    offenders = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for cell in cells:
            code = "".join(cell["source"]) if cell["cell_type"] == "code" else ""
            for call in re.findall(r"(?:load|describe|ensure)_ag_news\([^)]*download\s*=\s*False[^)]*\)", code):
                offenders.append(f"{path.name}: {call}")
    assert not offenders, "chapters that fail on a fresh machine: " + "; ".join(offenders)


LINUX_ONLY = re.compile(r"""ctypes\.CDLL\(|cdll\.LoadLibrary\(|(?:open|Path)\(\s*f?["']/(?:proc|sys)/""")


def test_no_chapter_reads_linux_only_files_itself() -> None:
    """Chapters run on macOS and Windows too: a measurement that needs Linux (/proc, glibc) is a gru_lib helper
    that says when it cannot measure (gru_lib.memory.peak_rss_mb returns None), never a notebook's own call."""
    offenders = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                offenders += [f"{path.name}: {m}" for m in LINUX_ONLY.findall("".join(cell["source"]))]
    assert not offenders, "Linux-only calls in notebooks: " + "; ".join(offenders)


def test_binder_installs_the_cpu_torch_and_the_library() -> None:
    """repo2docker reads only binder/ when it exists: pip installs its requirements.txt from the repository's
    root, so "." is the library with its dependencies, after the CPU build of the pinned torch."""
    binder = ROOT / "binder"
    files = {p.name for p in binder.iterdir()}
    assert files <= {"requirements.txt", "runtime.txt", "README.md"}, f"unexpected Binder files: {sorted(files)}"
    lines = [line.strip() for line in (binder / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    assert f"{_dev_torch_pin()}+cpu" in lines, "Binder must run the book's torch, as its CPU build"
    assert "." in lines, "Binder must install the library from the repository"
    runtime = (binder / "runtime.txt").read_text().strip()
    match = re.fullmatch(r"python-(3\.\d+)", runtime)
    assert match and Version(match.group(1)) in SpecifierSet(_project()["requires-python"]), runtime


# ---------------------------------------------------------------------------------------------------------
# The reader test: a fresh environment, one .ipynb, run to the end

reader = pytest.mark.skipif(os.environ.get(READER_ENV) != "1",
                            reason=f"the reader test builds a virtual environment; {READER_ENV}=1 (make test) runs it")

_DRIVER = r'''
import json, sys, traceback
from pathlib import Path
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

source, target = Path(sys.argv[1]), Path(sys.argv[2])
nb = nbformat.read(source, as_version=4)
nb.cells.append(nbformat.v4.new_code_cell(
    "import json, sys, gru_lib\n"
    "print(json.dumps({'prefix': sys.prefix, 'executable': sys.executable, 'gru_lib': gru_lib.__file__}))"))
client = NotebookClient(nb, kernel_name="python3", timeout=2400, allow_errors=False,
                        resources={"metadata": {"path": str(source.parent)}})
try:
    client.execute()
except CellExecutionError as error:
    print(str(error)[-6000:], file=sys.stderr)
    sys.exit(1)
finally:
    nbformat.write(nb, target)
'''


def _run(args: list[str], env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    return done


def _package_copy(target: Path) -> Path:
    """The checkout's package (pyproject.toml, README.md, gru_lib/): pip builds it in place, and a build in the
    checkout itself would leave a build/ folder there."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    shutil.copytree(ROOT / "gru_lib", target / "gru_lib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc", "build"))
    return target


@pytest.fixture(scope="module")
def reader_env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One fresh virtual environment holding only ipykernel, nbclient and nbformat (what any Jupyter has), and
    the environment variables a reader's machine would have, plus where to install gru_lib from."""
    base = tmp_path_factory.mktemp("reader")
    venv = base / "venv"
    # PIP_CONSTRAINT: pip must take torch==2.13.0, the release this book pins, as the CPU wheel that lies in
    # this machine's (and CI's) wheel folder; without the pin pip would fetch the newest torch from PyPI, a
    # multi-GB CUDA build.
    constraint = base / "torch-constraint.txt"
    constraint.write_text(_dev_torch_pin() + "\n")
    dropped = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR",
               "JUPYTER_DATA_DIR", "IPYTHONDIR", "MPLBACKEND", "GRU_LIB_PIP_SPEC", "PIP_REQUIRE_VIRTUALENV"}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    dev_bin = (ROOT / ".venv" / "bin").resolve()
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != dev_bin]
    env.update(
        PATH=os.pathsep.join([str(venv / "bin"), *path]),
        PIP_CONSTRAINT=str(constraint),
        GRU_LIB_PIP_SPEC=str(_package_copy(base / "gru-book")),
        # No user-level kernel spec or IPython profile can stand in for the fresh environment's.
        JUPYTER_DATA_DIR=str(base / "jupyter-data"),
        IPYTHONDIR=str(base / "ipython"),
    )
    if "GRU_LIB_DATA" not in env and (SHARED_DATA / "ag_news" / "test.csv").is_file():
        env["GRU_LIB_DATA"] = str(SHARED_DATA)
    started = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(venv)], env, 300, base)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "ipykernel", "nbclient", "nbformat"],
         env, 900, base)
    return {"venv": venv, "env": env, "setup_s": time.perf_counter() - started}


def _installed(python: Path, env: dict[str, str]) -> bool:
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec('gru_lib') is None)"
    return subprocess.run([str(python), "-c", code], env=env, cwd=python.parent, timeout=120).returncode == 0


@reader
@pytest.mark.parametrize("chapter", READER_CHAPTERS)
def test_chapter_runs_where_a_reader_opens_it(reader_env: dict, chapter: str,
                                              tmp_path: Path, record_property) -> None:
    venv, env = reader_env["venv"], reader_env["env"]
    python = venv / "bin" / "python"
    folder = tmp_path / "reader"
    folder.mkdir()
    notebook = folder / f"{chapter}.ipynb"
    shutil.copy2(NOTEBOOKS / notebook.name, notebook)  # the .ipynb alone, as downloaded
    had_gru_lib = _installed(python, env)
    started = time.perf_counter()
    _run([str(python), "-c", _DRIVER, str(notebook), str(tmp_path / "executed.ipynb")], env, 4800, folder)
    record_property("seconds", round(time.perf_counter() - started, 1))
    print(f"{chapter}: {time.perf_counter() - started:.0f} s (environment set-up {reader_env['setup_s']:.0f} s)")

    cells = json.loads((tmp_path / "executed.ipynb").read_text(encoding="utf-8"))["cells"]
    printed = "".join("".join(out.get("text", "")) for out in cells[-1]["outputs"] if out.get("name") == "stdout")
    probe = json.loads(printed.strip().splitlines()[-1])
    prefix = Path(probe["prefix"]).resolve()
    assert prefix == venv.resolve(), f"the kernel ran in {prefix}, not in the fresh environment {venv}"
    assert Path(probe["gru_lib"]).resolve().is_relative_to(prefix), f"gru_lib came from {probe['gru_lib']}"
    setup = next(cell for cell in cells if cell["cell_type"] == "code")
    if had_gru_lib:
        assert setup["outputs"] == [], f"{chapter}: the setup cell printed although gru_lib was installed"
    else:
        assert _installed(python, env), f"{chapter}: the setup cell did not install gru_lib"
