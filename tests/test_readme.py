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
