"""Data flows one way: cli -> pipelines -> models, samplers -> loading. kcli never imports diffusers."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "kcli"
ALLOWED = {  # layer -> kcli layers it may import
    "loading": {"loading"},
    "models": {"loading", "models"},
    "samplers": {"loading", "samplers"},
    "pipelines": {"loading", "models", "samplers", "pipelines"},
    "cli": {"loading", "models", "samplers", "pipelines", "cli"},
}
FILES = sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from ((a.name, node) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, node


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_imports_only_below(path):
    layer = path.relative_to(ROOT).parts[0]
    for name, _ in imports(path):
        assert not name.startswith("diffusers"), f"{path} imports diffusers, which is a test oracle only"
        if name.startswith("kcli."):
            target = name.split(".")[1]
            assert target in ALLOWED[layer] | {"__init__"} or name == "kcli", f"{path}: {layer} imports {name}"


@pytest.mark.parametrize("path", sorted((ROOT / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_modules_import_torch_lazily(path):
    top_level = ast.parse(path.read_text()).body
    for node in top_level:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                assert not name.startswith(("torch", "kcli.pipelines", "kcli.models", "kcli.samplers")), (
                    f"{path.name} imports {name} at start-up"
                )
