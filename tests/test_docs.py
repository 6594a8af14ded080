"""The docs site builds with warnings as errors, and what it shows is true of the code.

* ``mkdocs build --strict`` succeeds (a broken link, a page missing from the nav, a docstring
  mkdocstrings cannot parse: all fail the build);
* the API reference renders every module it names and names every public module;
* the home page carries the README's two commands and quickstart verbatim;
* Python snippets in the docs parse, and every ``from tl_persona... import name`` in them resolves.
"""

from __future__ import annotations

import ast
import contextlib
import io
import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
MKDOCS_YML = REPO / "mkdocs.yml"

# Public modules that the API reference does not have to show.
API_EXEMPT = {"tl_persona.testing", "tl_persona.__main__"}


class _TolerantLoader(yaml.SafeLoader):
    """Reads mkdocs.yml, ignoring MkDocs' custom tags (``!ENV``, ``!!python/name:``)."""


_TolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)
_TolerantLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def _config() -> dict:
    return yaml.load(MKDOCS_YML.read_text(), Loader=_TolerantLoader)


def _nav_pages(nav) -> list[str]:
    out: list[str] = []
    if isinstance(nav, str):
        if not re.match(r"^[a-z]+://", nav):
            out.append(nav)
    elif isinstance(nav, list):
        for item in nav:
            out += _nav_pages(item)
    elif isinstance(nav, dict):
        for v in nav.values():
            out += _nav_pages(v)
    return out


def _api_modules() -> list[str]:
    return re.findall(r"^:::\s*([\w.]+)", (DOCS / "api.md").read_text(), re.M)


def _public_modules() -> list[str]:
    import tl_persona

    names = ["tl_persona"]
    for info in pkgutil.walk_packages(tl_persona.__path__, "tl_persona."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        if info.ispkg:
            init = Path(info.module_finder.path) / info.name.rsplit(".", 1)[-1] / "__init__.py"
            if not init.is_file() or not init.read_text().strip():
                continue  # an empty package __init__: its modules are what gets documented
        names.append(info.name)
    return sorted(n for n in names if n not in API_EXEMPT and n != "tl_persona")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Build the site once, strictly, into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(MKDOCS_YML), "-d", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`mkdocs build --strict` failed with exit code {proc.returncode}.\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}",
            pytrace=False,
        )
    return out


def test_nav_pages_exist():
    missing = [p for p in _nav_pages(_config().get("nav", [])) if not (DOCS / p).is_file()]
    assert not missing, f"pages listed in mkdocs.yml's nav but missing from docs/: {missing}"


def test_docs_build_strict(site):
    assert (site / "index.html").is_file()
    for page in _nav_pages(_config().get("nav", [])):
        html = site / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        assert html.is_file(), f"{page} was not rendered ({html} missing)"


def test_every_docs_page_reads_in_a_browser(site, browser):
    """Each page of the built site as a person sees it at 1280 px: nothing fetched from outside (the
    site reads offline), every image shown, no page wider than the window, no table spilling out of
    its scroll box, a clean console."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from conftest import look_at_page

    problems = []
    for page in _nav_pages(_config().get("nav", [])):
        html = site / (page[: -len(".md")] + "/index.html" if page != "index.md" else "index.html")
        seen = look_at_page(browser, html)
        remote = [u for u in seen["resources"] if not u.startswith(("file:", "data:"))]
        broken = [alt for alt, ok, w, _ in seen["images"] if not (ok and w > 0)]
        spill = browser.execute_script(
            "return [...document.querySelectorAll('article table')].filter(t => {"
            "  const box = t.closest('.md-typeset__scrollwrap') || t.parentElement;"
            "  return box.getBoundingClientRect().right > window.innerWidth; }).length")
        for what, bad in (("fetches", remote), ("broken images", broken), ("console errors", seen["errors"]),
                          ("tables out of the window", spill)):
            if bad:
                problems.append(f"{page}: {what}: {bad}")
        if seen["scrollWidth"] > seen["innerWidth"]:
            problems.append(f"{page}: {seen['scrollWidth']} px wide in a {seen['innerWidth']} px window")
    assert not problems, problems


def test_api_reference_renders_every_module_it_names(site):
    html = (site / "api" / "index.html").read_text()
    mods = _api_modules()
    assert mods, "docs/api.md names no module (expected `::: tl_persona.<module>` lines)"
    for mod in mods:
        assert f'id="{mod}"' in html, f"mkdocstrings rendered nothing for `::: {mod}` in docs/api.md"


def test_api_reference_names_every_public_module():
    listed = set(_api_modules())
    missing = [m for m in _public_modules() if m not in listed]
    assert not missing, (
        f"public modules missing from the API reference: {missing}; add a `::: <module>` line for each "
        "to docs/api.md (or list the module in API_EXEMPT in tests/test_docs.py if it is not public API)"
    )


def _fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[^\n]*\n(.*?)^```", text, re.M | re.S)


def test_index_carries_the_readme_commands_and_quickstart():
    readme = (REPO / "README.md").read_text()
    index = (DOCS / "index.md").read_text()
    commands = _fenced_blocks(readme, "bash")
    assert len(commands) >= 2, "README.md should show the two commands in ```bash blocks"
    for block in commands[:2]:
        assert block in _fenced_blocks(index, "bash"), f"docs/index.md lacks the README command:\n{block}"
    quick = _fenced_blocks(readme, "python")
    assert quick, "README.md should have a quickstart in a ```python block"
    assert quick[0] in _fenced_blocks(index, "python"), "docs/index.md's quickstart differs from the README's"


def test_readme_quickstart_runs_and_shows_what_it_says():
    code = _fenced_blocks((REPO / "README.md").read_text(), "python")[0]
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md quickstart", "exec"), ns)
    from tl_persona import hooks as H

    assert ns["latent"] == int(ns["diff"].top(1, "increase").index[0])
    assert H.hooks_attached(ns["org"].base) == []
    text = out.getvalue()
    rows = [line.split() for line in text.splitlines() if line.split()[:1] and line.split()[0] in ns["other"]]
    assert len(rows) == 4 and all(float(r[2]) >= 30.0 for r in rows), text  # steered base: toxic in every domain


def _tl_imports(tree: ast.AST) -> list[tuple[str, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tl_persona":
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "tl_persona"]
    return out


def check_tl_imports(source: str, where: str) -> None:
    """Parse ``source`` and check that every tl_persona import in it resolves (used for notebooks too)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise AssertionError(f"{where}: Python snippet does not parse: {e}\n{source}") from None
    for module, name in _tl_imports(tree):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            raise AssertionError(f"{where}: `{module}` cannot be imported ({e})") from None
        if name and name != "*" and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                raise AssertionError(f"{where}: `from {module} import {name}`: no such name") from None


@pytest.mark.parametrize("page", sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")))
def test_python_snippets_parse_and_their_imports_resolve(page):
    for i, block in enumerate(_fenced_blocks((DOCS / page).read_text(), "python")):
        check_tl_imports(block, f"docs/{page}, python block {i + 1}")


def test_cli_page_documents_every_command_and_option():
    try:
        from tl_persona.cli import build_parser
    except ImportError:
        pytest.skip("tl_persona.cli does not exist yet")
    import argparse

    text = (DOCS / "cli.md").read_text()
    parser = build_parser()
    missing: list[str] = []

    def options(p: argparse.ArgumentParser, where: str) -> None:
        for action in p._actions:
            for opt in action.option_strings:
                if opt in ("-h", "--help"):
                    continue
                if not re.search("`" + re.escape(opt) + "[` ,]", text):
                    missing.append(f"{where} {opt}")

    options(parser, "tl-persona")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if f"`{name}`" not in text:
                    missing.append(f"command {name}")
                options(sub, name)
    assert not missing, f"docs/cli.md does not mention: {missing}"


def test_smollm2_page_quotes_the_recorded_run():
    """docs/smollm2.md states what benchmarks/smollm2_paper.json recorded: every claim's measured value,
    the verdict count, the wall time and the peak memory (so the page cannot drift from the run)."""
    import json

    rec = json.loads((DOCS.parent / "benchmarks" / "smollm2_paper.json").read_text())
    text = (DOCS / "smollm2.md").read_text()
    missing = [c["measured"] for c in rec["claims"] if c["measured"] not in text]
    assert not missing, f"docs/smollm2.md does not quote these measured values of the recorded run: {missing}"
    met = sum(c["met"] for c in rec["claims"])
    assert f"{met} of {len(rec['claims'])}" in text
    assert f"{rec['run']['wall_s_median']:.0f} s" in text and f"{rec['run']['peak_rss_mb']} MB" in text
