"""The documentation site builds with warnings as errors and covers the package.

``mkdocs build --strict`` fails on a broken link, a missing figure, a page missing from
the navigation, or a docstring that mkdocstrings cannot parse.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
           "--site-dir", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    # mkdocstrings formats the separate signatures with ruff (the docs extra)
    assert "Formatting signatures requires" not in result.stdout + result.stderr
    return out


def test_site_builds_strict(site):
    assert (site / "index.html").is_file()
    assert (site / "benchmarks" / "index.html").is_file()


def test_every_module_has_an_api_page(site):
    package = ROOT / "numpyro_wjs"
    modules = sorted(
        p.relative_to(package).with_suffix("").as_posix()
        for p in package.rglob("*.py")
        if not p.stem.startswith("_") and p.stem != "cli"  # the CLI is documented on its own page
    )
    assert "core/langevin" in modules and "infer/walkjump" in modules
    for name in modules:
        page = site / "api" / name / "index.html"
        assert page.is_file(), f"docs/api/{name}.md is missing"
    kernels = (site / "api" / "infer" / "langevin" / "index.html").read_text()
    for cls in ("ULA", "MALA", "UnderdampedLangevin"):
        assert f'id="numpyro_wjs.infer.langevin.{cls}"' in kernels


#: Pages whose Python blocks run top to bottom as one script.
RUNNABLE_PAGES = ["index.md", *(f"kernels/{p.name}" for p in sorted((DOCS / "kernels").glob("*.md")))]


@pytest.mark.parametrize("page", RUNNABLE_PAGES)
def test_code_blocks_run(page):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks, f"{page} has no Python example"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS / page), "exec"), namespace)


README_BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_has_python_blocks():
    assert len(README_BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(README_BLOCKS)))
def test_readme_block_runs_alone(index, capsys):
    """Each README snippet runs on its own, in a fresh namespace; the first prints a summary."""
    exec(compile(README_BLOCKS[index], f"README.md (Python block {index + 1})", "exec"), {})
    if index == 0:
        assert "r_hat" in capsys.readouterr().out


def test_every_example_is_documented():
    page = (DOCS / "examples.md").read_text()
    scripts = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
    assert scripts
    for script in scripts:
        assert f"examples/{script.name}" in page, f"{script.name} is not described in docs/examples.md"
        figures = re.findall(rf"figures/({script.stem[3:]}[\w-]*\.png)", page)
        assert figures, f"docs/examples.md shows no figure of {script.name}"
