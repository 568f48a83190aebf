"""The architecture, held by tests: data flows one way, cli -> pipelines -> models, samplers -> loading, with
the errors at the bottom (the server, kcli.serve, beside the command line, above the pipelines); the command
line uses only the pipelines' public API; no eval or exec; small files.
kcli never imports diffusers."""

import ast
from pathlib import Path

import pytest

import kcli.pipelines

ROOT = Path(__file__).parents[1] / "kcli"
ALLOWED = {  # layer -> kcli layers it may import (every layer may import kcli.errors and kcli itself)
    "loading": {"loading"},
    "models": {"loading", "models"},
    "samplers": {"loading", "samplers"},
    "pipelines": {"loading", "models", "samplers", "pipelines"},
    "serve": {"pipelines", "serve"},  # the server, and the --server client the command line uses
    "cli": {"pipelines", "cli", "serve"},
}
FILES = sorted(p for p in ROOT.rglob("*.py") if p.parent != ROOT)
PUBLIC = {"kcli.pipelines", *(f"kcli.pipelines.{m}" for m in kcli.pipelines.PUBLIC_MODULES)}


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
            ok = target in ALLOWED[layer] | {"errors"} or name == "kcli"
            assert ok or (layer == "loading" and name == "kcli.loading.errors"), f"{path}: {layer} imports {name}"


@pytest.mark.parametrize("path", sorted((ROOT / "cli").glob("*.py")), ids=lambda p: p.name)
def test_cli_imports_only_the_pipelines_public_api_errors_and_itself(path):
    for name, node in imports(path):
        if name.startswith("kcli.pipelines"):
            assert name in PUBLIC, f"{path.name} imports {name}, which is not the pipelines' public API"
            if name == "kcli.pipelines" and isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    assert alias.name in kcli.pipelines.__all__ or alias.name in kcli.pipelines.PUBLIC_MODULES, (
                        f"{path.name} imports kcli.pipelines.{alias.name}")
        elif name.startswith("kcli"):
            assert name in ("kcli", "kcli.errors") or name.startswith(("kcli.cli", "kcli.serve")), (
                f"{path.name} imports {name}")
        assert not name.startswith("torch"), f"{path.name} imports torch"


def test_the_public_api_names_exist():
    for name in kcli.pipelines.__all__:
        assert getattr(kcli.pipelines, name) is not None


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_eval_or_exec(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func  # eval(...), exec(...), builtins.eval(...); a module's .eval() mode switch is fine
            name = func.id if isinstance(func, ast.Name) else (
                func.attr if isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "builtins" else "")
            assert name not in ("eval", "exec"), f"{path.relative_to(ROOT)}:{node.lineno} calls {name}"


def test_no_file_over_400_lines_and_the_cli_is_small():
    sizes = {p: len(p.read_text().splitlines()) for p in ROOT.rglob("*.py")}
    big = {str(p.relative_to(ROOT)): n for p, n in sizes.items() if n > 400}
    assert not big, big
    cli = sum(n for p, n in sizes.items() if p.parent == ROOT / "cli")
    assert cli < 1900, f"kcli/cli has {cli} lines"
