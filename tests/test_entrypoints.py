"""Every script imports, and every ``numpyro_wjs`` name the documentation cites exists.

The scripts in ``benchmarks/`` and ``examples/`` are loaded as modules (their
``__main__`` block does not run), so a moved or renamed import fails here in seconds
instead of when a user first runs the script. The names are read from README.md and
``docs/**/*.md``: dotted ``numpyro_wjs.*`` names in inline code and code blocks,
``from numpyro_wjs... import ...`` lines, ``numpyro_wjs.module`` (`name`, ...) in prose,
short names such as ``core.walkjump`` in inline code, and the ``| module | holds |``
tables; each must resolve by importing its longest module prefix and reading the rest
as attributes.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").glob("*.py")])
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SUBPACKAGES = ("core", "infer", "nn", "diagnostics")


def load_script(path: Path):
    """Execute ``path`` as a module not named ``__main__``, with its folder importable."""
    name = f"_entrypoint_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_scripts_found():
    names = {p.name for p in SCRIPTS}
    assert {"mnist_sampling.py", "kernel_overhead.py", "06_walk_jump_mixture.py", "_cli.py"} <= names
    assert len(SCRIPTS) >= 20, sorted(names)


@pytest.mark.parametrize("path", SCRIPTS, ids=[f"{p.parent.name}/{p.name}" for p in SCRIPTS])
def test_script_imports(path):
    if not path.stem.startswith("_"):
        # the work runs only when the script is run, not when it is imported
        assert re.search(r'^if __name__ == "__main__":', path.read_text(), flags=re.M), path.name
    module = load_script(path)
    if not path.stem.startswith("_"):
        assert callable(getattr(module, "main", None)), f"{path.name} has no main()"


def test_a_moved_import_fails(tmp_path):
    script = tmp_path / "moved.py"
    script.write_text("from numpyro_wjs.infer.walkjump import WalkJump, WalkState\n")
    with pytest.raises(ImportError, match="WalkState"):
        load_script(script)


# ---------------------------------------------------------------------------- names

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", flags=re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"\bnumpyro_wjs(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^\s*from\s+(numpyro_wjs(?:\.\w+)*)\s+import\s+\(?([\w\s,]+?)\)?\s*$", flags=re.M)
SHORT = re.compile(rf"^(?:{'|'.join(SUBPACKAGES)})(?:\.[A-Za-z_]\w*)+$")
# `numpyro_wjs.core.gibbs` (`noise_step`, `denoise_step`): names placed in a module
LISTED = re.compile(r"`(numpyro_wjs(?:\.\w+)+)`\s*\(((?:`\w+`(?:,\s*|\s+and\s+)?)+)\)")
FOREIGN = {"NumPyro", "numpyro", "JAX", "Flax", "optax", "orbax", "ArviZ"}
TABLE_ROW = re.compile(r"^\|\s*\**\[?`([\w.]+)`\]?(?:\([^)]*\))?\**\s*\|(.*)\|\s*$")


def resolve(name: str) -> object:
    """Import the longest module prefix of ``name``, then read the rest as attributes."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        try:
            obj = importlib.import_module(prefix)
        except ModuleNotFoundError as err:
            if err.name and (prefix == err.name or prefix.startswith(err.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(name)


def cited_names(text: str) -> set[str]:
    """Every ``numpyro_wjs`` name that ``text`` (Markdown) places somewhere."""
    names: set[str] = set()
    blocks = FENCE.findall(text)
    prose = FENCE.sub("", text)
    spans = INLINE.findall(prose)
    for code in [*blocks, *spans]:
        names.update(DOTTED.findall(code))
        for module, imported in FROM_IMPORT.findall(code):
            for item in imported.split(","):
                if item.strip():
                    names.add(f"{module}.{item.split()[0]}")
    for line in prose.splitlines():
        if line.startswith(":::"):  # mkdocstrings: ::: numpyro_wjs.module
            names.update(DOTTED.findall(line))
    names.update(f"numpyro_wjs.{span}" for span in spans if SHORT.match(span))
    for module, listed in LISTED.findall(prose):
        names.update(f"{module}.{item}" for item in re.findall(r"`(\w+)`", listed))
    in_table = False
    for line in prose.splitlines():
        if re.match(r"^\|\s*module\s*\|\s*holds\s*\|", line):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
        row = TABLE_ROW.match(line) if in_table else None
        if row:
            module = row[1] if row[1].startswith("numpyro_wjs") else f"numpyro_wjs.{row[1]}"
            names.add(module)
            # a name the prose gives to another library ("orbax `CheckpointManager`") is not ours
            for before, item in re.findall(r"(\w*)\s?`([A-Za-z_]\w*)`", row[2]):
                if before not in FOREIGN:
                    names.add(f"{module}.{item}")
    return names


def unresolved(names: set[str]) -> list[str]:
    bad = []
    for name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError) as err:
            bad.append(f"{name}: {type(err).__name__}: {err}")
    return bad


def test_cited_names_resolve():
    cited = {page.relative_to(ROOT).as_posix(): cited_names(page.read_text()) for page in PAGES}
    total = set().union(*cited.values())
    # the pages cite every module, the pure steps by their full name, and the layout tables
    assert len(total) >= 60, len(total)
    assert {
        "numpyro_wjs.core.walkjump.walk_step",
        "numpyro_wjs.core.gibbs.denoise_step",
        "numpyro_wjs.infer.langevin",
        "numpyro_wjs.nn.train.train_denoiser",
        "numpyro_wjs.diagnostics.modes.classifier_scores",
    } <= total
    bad = {page: unresolved(names) for page, names in cited.items()}
    assert not any(bad.values()), {page: b for page, b in bad.items() if b}


def test_a_misplaced_name_is_caught():
    """The checks above fail on names placed in the wrong module."""
    text = (
        "pure steps: `numpyro_wjs.infer.walkjump` (`walk_step`,\n`sequential_jump`) and "
        "`numpyro_wjs.infer.gibbs` (`noise_step`, `denoise_step`).\n\n"
        "| module | holds |\n| --- | --- |\n| `infer.walkjump` | `WalkJump`, `walk_jump_step` |\n\n"
        "```python\nfrom numpyro_wjs.infer.walkjump import WalkState\n```\n"
        "See `numpyro_wjs.core.walkjump.WalkJump` and `infer.gibbs.noise_step`.\n"
    )
    bad = {line.split(":")[0] for line in unresolved(cited_names(text))}
    assert bad == {
        "numpyro_wjs.infer.walkjump.walk_step",
        "numpyro_wjs.infer.walkjump.sequential_jump",
        "numpyro_wjs.infer.gibbs.noise_step",
        "numpyro_wjs.infer.gibbs.denoise_step",
        "numpyro_wjs.infer.walkjump.walk_jump_step",
        "numpyro_wjs.infer.walkjump.WalkState",
        "numpyro_wjs.core.walkjump.WalkJump",
        "numpyro_wjs.infer.gibbs.noise_step",
    }
