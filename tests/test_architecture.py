"""The layers of docs/architecture.md: each subpackage imports only the layers before it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "numpyro_wjs"

#: layer -> the package modules and third-party roots it may import
ALLOWED = {
    "core": ({"core"}, {"jax", "numpy"}),
    "infer": ({"core", "infer", "validation"}, {"jax", "numpy", "numpyro"}),
    "nn": ({"nn", "validation", "data", "targets"}, {"jax", "numpy", "flax", "optax", "orbax", "tqdm"}),
    "diagnostics": ({"diagnostics", "infer", "targets", "validation"}, None),
}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "numpyro_wjs":
            names |= {f"numpyro_wjs.{a.name}" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_the_layers_before_them(layer):
    internal, external = ALLOWED[layer]
    for path in sorted((PACKAGE / layer).glob("*.py")):
        for name in _imports(path):
            root, _, rest = name.partition(".")
            if root == "numpyro_wjs":
                assert rest.split(".")[0] in internal, f"{path.name} imports {name}"
            elif external is not None and root not in {"__future__"} and not _stdlib(root):
                assert root in external, f"{path.name} imports {name}"


def _stdlib(root: str) -> bool:
    import sys

    return root in sys.stdlib_module_names
