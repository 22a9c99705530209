"""The publishing workflow (.github/workflows/publish.yml): it parses, and it runs what the README promises.

The README gives readers two commands (`make book`, `make test`); the workflow that publishes the site must run
the same targets (directly, or through a target whose recipe runs them), on the full data fetched by the
library's own loader, and deploy the very site that `make test` checked. Its first step stops a fork whose
_config.yml still names another repository, and before the build it stamps the notebooks' setup cells with the
commit being built; both steps are run here on copies of the files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gru_lib.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "publish.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{WORKFLOW} is not a YAML mapping"
    return data


def _steps(workflow: dict, job: str) -> list[dict]:
    return workflow["jobs"][job]["steps"]


def _run_lines(workflow: dict) -> list[str]:
    """Every shell line the build job runs, in order."""
    return [line.strip() for step in _steps(workflow, "build") for line in step.get("run", "").splitlines()
            if line.strip()]


def _make_targets(lines: list[str]) -> list[str]:
    return [target for line in lines for target in re.findall(r"(?:^|&&|;)\s*make\s+([\w-]+)", line)]


def _readme_targets() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"),
                        flags=re.DOTALL)
    return [m for block in blocks for m in re.findall(r"^\s*make\s+([\w-]+)", block, flags=re.MULTILINE)]


def _makefile_recipes() -> dict[str, str]:
    """Target -> its recipe text (the tab-indented lines after ``target:``)."""
    recipes: dict[str, str] = {}
    current = None
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([\w-]+)\s*:(?!=)", line)
        if match:
            current = match.group(1)
            recipes[current] = ""
        elif line.startswith("\t") and current:
            recipes[current] += line + "\n"
        elif line.strip() and not line.startswith("#"):
            current = None
    return recipes


def test_triggers_and_permissions(workflow: dict) -> None:
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True
    assert "main" in triggers["push"]["branches"]
    assert "workflow_dispatch" in triggers
    assert workflow["permissions"]["pages"] == "write" and workflow["permissions"]["id-token"] == "write"


def test_build_job_sets_up_python_311(workflow: dict) -> None:
    uses = {step.get("uses", "").split("@")[0]: step for step in _steps(workflow, "build")}
    assert "actions/checkout" in uses
    assert str(uses["actions/setup-python"]["with"]["python-version"]) == "3.11"


def test_runs_the_readme_commands(workflow: dict) -> None:
    readme = _readme_targets()
    assert readme == ["book", "test"], f"the README's commands changed: {readme}"
    run = _make_targets(_run_lines(workflow))
    recipes = _makefile_recipes()
    for target in run:
        assert target in recipes, f"the workflow runs `make {target}`, which the Makefile does not define"
    reached = set(run) | {sub for t in run for sub in re.findall(r"\$\(MAKE\)\s+([\w-]+)", recipes[t])}
    missing = [t for t in readme if t not in reached]
    assert not missing, f"the README's `make {missing[0]}` is not run by the workflow (it runs {run})"


def test_full_data_then_notebooks_then_tests_then_deploy(workflow: dict) -> None:
    lines = _run_lines(workflow)
    download = next(i for i, line in enumerate(lines) if "gru_lib data --download" in line)
    assert any("GRU_LIB_DATA" in line for line in lines[: download + 1]), "GRU_LIB_DATA is not set for the download"
    targets = [(i, t) for i, line in enumerate(lines) for t in _make_targets([line])]
    notebooks = next(i for i, t in targets if t == "notebooks")
    test = next(i for i, t in targets if t == "test")
    browser = next(i for i, line in enumerate(lines) if "playwright install" in line or "chromium" in line)
    assert download < notebooks < test and browser < test

    steps = _steps(workflow, "build")
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-pages-artifact"))
    assert upload["with"]["path"] == "_build/html"
    assert steps.index(upload) == len(steps) - 1, "the site is uploaded before it was tested"
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert any(s.get("uses", "").startswith("actions/deploy-pages") for s in deploy["steps"])


def test_the_download_command_exists() -> None:
    """The workflow's `python -m gru_lib data --download` is a real command of the library's CLI."""
    args = build_parser().parse_args(["data", "--download"])
    assert args.command == "data" and args.download is True and callable(args.func)


# --- the repository check and the commit stamp ------------------------------------------------------------

SHA = "0123456789abcdef0123456789abcdef01234567"


def _step(workflow: dict, name_start: str) -> tuple[int, dict]:
    steps = _steps(workflow, "build")
    return next((i, s) for i, s in enumerate(steps) if s.get("name", "").startswith(name_start))


def _config_url_line() -> int:
    """1-based line of repository.url in _config.yml."""
    lines = (ROOT / "_config.yml").read_text(encoding="utf-8").splitlines()
    start = lines.index("repository:")
    return next(i + 1 for i in range(start + 1, len(lines)) if lines[i].split()[:1] == ["url:"])


def _bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=120)


def test_repository_check_comes_first(workflow: dict) -> None:
    index, step = _step(workflow, "Check that _config.yml names this repository")
    steps = _steps(workflow, "build")
    assert [s.get("uses", "").split("@")[0] for s in steps[:index]] == ["actions/checkout"], (
        "the repository check must be the first step after the checkout"
    )
    assert step["env"]["REPOSITORY"] == "${{ github.repository }}"


@pytest.mark.parametrize("repository", ["gru-book/gru-book", "Gru-Book/gru-book"])
def test_repository_check_passes_in_the_configured_repository(workflow: dict, tmp_path: Path,
                                                              repository: str) -> None:
    _, step = _step(workflow, "Check that _config.yml names this repository")
    shutil.copy2(ROOT / "_config.yml", tmp_path / "_config.yml")
    configured = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    if repository.lower() != configured.removeprefix("https://github.com/").lower():
        pytest.skip(f"_config.yml names {configured}")
    github_env = tmp_path / "github_env"
    done = _bash(step["run"], tmp_path, REPOSITORY=repository, GITHUB_ENV=str(github_env))
    assert done.returncode == 0, done.stdout + done.stderr
    assert github_env.read_text() == f"BOOK_REPOSITORY_URL={configured}\n"


def test_repository_check_stops_a_fork_with_one_line_naming_the_line(workflow: dict, tmp_path: Path) -> None:
    _, step = _step(workflow, "Check that _config.yml names this repository")
    shutil.copy2(ROOT / "_config.yml", tmp_path / "_config.yml")
    done = _bash(step["run"], tmp_path, REPOSITORY="someone/gru-book-fork", GITHUB_ENV=str(tmp_path / "env"))
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    line = _config_url_line()
    assert f"_config.yml line {line} (repository.url)" in lines[0] and f"line={line}" in lines[0], lines[0]
    assert "https://github.com/someone/gru-book-fork" in lines[0]


def test_setup_cells_are_stamped_with_the_commit_before_the_build(workflow: dict, tmp_path: Path) -> None:
    index, step = _step(workflow, "Stamp the setup cells with this commit")
    lines_before = [line for s in _steps(workflow, "build")[:index] for line in s.get("run", "").splitlines()]
    assert not _make_targets([line.strip() for line in lines_before]), "the stamp must come before any make"
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"].rstrip("/")
    done = _bash(step["run"], tmp_path, BOOK_REPOSITORY_URL=url, GITHUB_SHA=SHA)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        stamped = (tmp_path / "notebooks" / path.name).read_text(encoding="utf-8")
        assert f'"gru_lib @ git+{url}@{SHA}' in stamped.replace('\\"', '"'), f"{path.name} was not stamped"
        assert stamped.replace(SHA, "main") == path.read_text(encoding="utf-8"), f"{path.name}: more than the ref"
        json.loads(stamped)


def test_the_stamp_refuses_a_notebook_without_the_setup_cell(workflow: dict, tmp_path: Path) -> None:
    _, step = _step(workflow, "Stamp the setup cells with this commit")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "99_new.ipynb").write_text('{"cells": []}')
    done = _bash(step["run"], tmp_path, BOOK_REPOSITORY_URL="https://github.com/a/b", GITHUB_SHA=SHA)
    assert done.returncode != 0 and "99_new.ipynb" in done.stderr
