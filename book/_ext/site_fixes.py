"""Sphinx extension (loaded from _config.yml) that fixes a toolchain bug the browser test caught.

sphinx-thebe 0.3.1 registers its inline configuration script (``const THEBE_JS_URL = ...``) with
``app.add_js_file(None, body=...)`` after the HTML builder has started. Sphinx 7.4 then lists it twice (once
with filename ``None``, once, re-read from the registry, with ``''``), every page declares the constant twice and
the browser reports "Identifier 'THEBE_JS_URL' has already been declared". This drops the repeat from each page.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx


def _drop_repeated_scripts(app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for script in scripts:
        filename = getattr(script, "filename", script) or ""
        key = (str(filename), tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app: Sphinx) -> dict[str, Any]:
    # After the builder's own handler sorts the list (priority 500 is the default).
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
