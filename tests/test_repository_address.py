"""One repository address: _config.yml's ``repository.url`` (and the Pages address ``html.baseurl`` it implies).

Everything else that names the repository follows it: the README's links, the setup page's commands, the
notebooks' setup cells (their default install address), the launch buttons that Jupyter Book derives from
_config.yml, and the publishing workflow (which refuses to run in a repository with another address,
tests/test_workflow.py). A fork edits the two lines of _config.yml and these tests name whatever else is stale."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
URL = CONFIG["repository"]["url"].rstrip("/")
CHAPTER = "notebooks/01_gru_cell.ipynb"


def _owner_name(url: str = URL) -> tuple[str, str]:
    match = re.fullmatch(r"https://github\.com/([\w.-]+)/([\w.-]+)", url)
    assert match, f"_config.yml repository.url must be https://github.com/OWNER/NAME, got {url!r}"
    return match.group(1), match.group(2)


def _github_addresses(text: str) -> list[str]:
    """Every github.com/OWNER/NAME address (a trailing .git, path or ref dropped)."""
    return [f"https://github.com/{o}/{n.removesuffix('.git')}"
            for o, n in re.findall(r"https://github\.com/([\w.-]+)/([\w.-]+?)(?=\.git\b|[/@)\s\"'`>]|$)", text)]


def _pages_addresses(text: str) -> list[str]:
    return re.findall(r"https://[\w.-]+\.github\.io/[\w./-]*", text)


def test_the_pages_address_follows_the_repository() -> None:
    owner, name = _owner_name()
    assert CONFIG["html"]["baseurl"] == f"https://{owner.lower()}.github.io/{name}/", (
        f"_config.yml html.baseurl {CONFIG['html']['baseurl']!r} is not the Pages address of {URL}"
    )
    assert CONFIG["repository"].get("branch", "main") == "main", "the launch buttons must open main"


def test_readme_links_to_the_site_and_the_repository() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert CONFIG["html"]["baseurl"] in readme, "README does not link to the published site"
    assert set(_pages_addresses(readme)) == {CONFIG["html"]["baseurl"]}
    addresses = _github_addresses(readme)
    assert addresses and set(addresses) == {URL}, f"README names {sorted(set(addresses))}, _config.yml {URL}"


def test_setup_page_commands_name_the_repository() -> None:
    page = (ROOT / "book" / "setup.md").read_text(encoding="utf-8")
    commands = re.findall(r"^\s*(?:git clone|pip install|%pip install)\b.*$", page, flags=re.MULTILINE)
    named = [a for command in commands for a in _github_addresses(command)]
    assert named, "the setup page has no clone or pip install of the repository"
    assert set(named) == {URL}, f"setup page commands name {sorted(set(named))}, _config.yml {URL}"
    assert set(_pages_addresses(page)) <= {CONFIG["html"]["baseurl"]}


def test_setup_cells_install_from_the_repository() -> None:
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cell = next(c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code")
        defaults = re.findall(r'"gru_lib @ git\+(https://[^@"]+)@', "".join(cell["source"]))
        assert defaults == [URL], f"{path.name}: setup cell installs from {defaults}, _config.yml names {URL}"


def test_the_workflow_names_the_pages_address() -> None:
    workflow = (ROOT / ".github" / "workflows" / "publish.yml").read_text(encoding="utf-8")
    assert set(_pages_addresses(workflow)) == {CONFIG["html"]["baseurl"]}
    assert not _github_addresses(workflow), "the workflow must read the repository from _config.yml"


def _launch_urls() -> dict[str, str]:
    """The Colab and Binder addresses of chapter 1 as Jupyter Book builds them: its own translation of
    _config.yml into the theme's options, then the theme's rule (org and repo are the URL's last two parts)."""
    from jupyter_book.config import get_final_config

    config, _ = get_final_config(user_yaml=ROOT / "_config.yml", cli_config={"latex_individualpages": False},
                                 sourcedir=ROOT)
    options = config["html_theme_options"]
    _, org, repo = options["repository_url"].strip("/").rsplit("/", 2)
    branch = options.get("repository_branch") or "main"
    path = f"{options.get('path_to_docs', '').strip('/') + '/' if options.get('path_to_docs') else ''}{CHAPTER}"
    buttons = options["launch_buttons"]
    return {
        "colab": f"{buttons['colab_url'].strip('/')}/github/{org}/{repo}/blob/{branch}/{path}",
        "binder": f"{buttons['binderhub_url'].strip('/')}/v2/gh/{org}/{repo}/{branch}",
    }


def test_launch_buttons_open_the_repository_of_the_setup_cells() -> None:
    pytest.importorskip("jupyter_book")
    owner, name = _owner_name()
    urls = _launch_urls()
    assert urls["colab"] == f"https://colab.research.google.com/github/{owner}/{name}/blob/main/{CHAPTER}"
    assert urls["binder"] == f"https://mybinder.org/v2/gh/{owner}/{name}/main"


def test_built_site_launch_links_name_the_repository() -> None:
    """In a built site (make book), chapter 1's launch links open this repository's main."""
    page = ROOT / "_build" / "html" / "notebooks" / "01_gru_cell.html"
    if not page.is_file():
        pytest.skip("no built site: run make book")
    html = page.read_text(encoding="utf-8")
    owner, name = _owner_name()
    assert f"https://colab.research.google.com/github/{owner}/{name}/blob/main/{CHAPTER}" in html
    assert f"https://mybinder.org/v2/gh/{owner}/{name}/main" in html
