"""The README's set-up commands are what CI runs."""

from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("## Set up", 1)[1].split("## Use", 1)[0].split("```bash\n")[1:]
    commands = [b.split("\n```", 1)[0].strip() for b in blocks]
    assert len(commands) == 2
    install = commands[0].split(" && kandinsky generate")[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert install in ci and commands[1] in ci


def test_the_python_section_uses_the_public_api():
    import ast

    import kcli.pipelines

    readme = (ROOT / "README.md").read_text()
    code = readme.split("### Python", 1)[1].split("```python\n", 1)[1].split("\n```", 1)[0]
    tree = ast.parse(code)
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "kcli.pipelines"
                for a in n.names]
    assert {"Kandinsky", "TextToImage", "Inpaint", "Fuse", "batch"} <= set(imported)
    for name in imported:
        assert name in kcli.pipelines.__all__ or name in kcli.pipelines.PUBLIC_MODULES, name
