"""The publishing workflow (.github/workflows/publish.yml): it parses, and it runs what the README promises.

The README gives readers two commands (`make book`, `make test`); the workflow that publishes the site must run
the same targets (directly, or through a target whose recipe runs them), on the full data fetched by the
library's own loader, and deploy the very site that `make test` checked."""

from __future__ import annotations

import re
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
