"""``kandinsky models``: what is known, what is cached and how big, download ahead of time, check, free space.

NAME is a model of the registry (``2.2``, ``2.1``) or a hub repository id (``org/name``). Tables and paths
go to stdout; progress and messages to stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from kcli.cli import app
from kcli.cli.display import DownloadView
from kcli.cli.errors import EXIT_INTERRUPTED, fail, user_errors
from kcli.errors import KandinskyError
from kcli.pipelines import store

models_app = typer.Typer(name="models", help="List, download, check and remove checkpoints.",
                         no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(models_app, name="models")

Name = Annotated[str, typer.Argument(help="A model (2.2, 2.1, 2.2-depth) or a hub repository id (org/name).",
                                     show_default=False)]


def _parts(model, repos) -> list[tuple[str, object]]:
    """(role, repository) pairs: prior / decoder / inpaint / depth for a model, the id itself for a repository."""
    if model is None:
        return [("repository", r) for r in repos]
    return [(part, getattr(model, part)) for part in store.PARTS if getattr(model, part) in repos]


def _state(repo) -> tuple[str, int]:

    state = store.inspect(repo)
    used = store.disk_usage(repo.id)
    if state.complete:
        return "yes", used
    return ("partial" if used else "no"), used


def _known(repos, detail: bool = False) -> str:
    """The download size the registry knows: exact, or a lower bound when some sizes were never seen."""
    from kcli.cli.render import human_size

    if any(r.files is None for r in repos):
        return "?"
    total = human_size(sum(r.known_size for r in repos))
    unknown = sum(f.size is None for r in repos for f in r.files)
    if not unknown:
        return total
    return f">= {total}" + (f" ({unknown} file sizes unknown)" if detail else "")


@models_app.command("list")
def list_models() -> None:
    """The known models, and every repository in the cache, with sizes."""
    from kcli.cli import render

    with user_errors():
        registry = store.load_registry()
        rows, known = [], set()
        for model in registry.models.values():
            states = [_state(r) for r in model.repos()]
            known.update(r.id for r in model.repos())
            used = sum(u for _, u in states)
            cached = ("yes" if all(s == "yes" for s, _ in states[:2]) else
                      "partial" if used else "no")
            roles = [role for role, _ in _parts(model, model.repos())]
            missing = [role for role, (s, _) in zip(roles, states) if role in ("inpaint", "depth") and s != "yes"]
            if cached == "yes" and missing:  # optional parts
                cached = f"yes (no {', '.join(missing)})"
            rows.append([model.name + (" *" if model.name == registry.default else ""), model.description,
                         _known(model.repos()), cached, render.human_size(used) if used else "-"])
        folder = store.cache_dir()
        others = sorted(p.name[len("models--"):].replace("--", "/", 1) for p in folder.glob("models--*")
                        if p.name[len("models--"):].replace("--", "/", 1) not in known) if folder.is_dir() else []
        for repo_id in others:

            state, used = _state(store.repo_spec(repo_id))
            rows.append([repo_id, "(hub repository)", "?", state,
                         render.human_size(used) if used else "-"])
        render.table(["name", "description", "download", "cached", "on disk"], rows)
        render.info(f"cache: {folder}  (* = default)")


@models_app.command()
def pull(
    name: Name,
    no_inpaint: Annotated[bool, typer.Option("--no-inpaint", help="Skip the inpainting decoder (only inpaint "
                                             "and outpaint use it).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress; the folders still go to stdout.")] = False,
) -> None:
    """Download a model ahead of time (resuming an interrupted download). Prints its folders."""
    from kcli.cli import render

    with user_errors():
        label, model, repos = store.target(name)
        if model is not None and no_inpaint:
            repos = repos[:2]
        try:
            with DownloadView(quiet) as view:
                paths = store.fetch(repos, what=label, progress=view,
                                       hint=lambda repo: store.not_cached_message(store.owner(repo)))
        except KeyboardInterrupt:
            raise fail("interrupted: the partial download is kept and resumes next time", EXIT_INTERRUPTED) from None
        for (role, _), path in zip(_parts(model, repos), paths):
            typer.echo(f"{role}\t{path}" if model is not None else str(path))
        if not quiet:
            render.info(f"{label} is ready: {render.human_size(sum(store.disk_usage(r.id) for r in repos))} "
                        "in the cache")


@models_app.command()
def info(name: Name) -> None:
    """A model's repositories and files: revision, sizes, checksums, and what is cached."""
    from kcli.cli import render

    with user_errors():
        _, model, repos = store.target(name)
        for role, repo in _parts(model, repos):
            state = store.inspect(repo)
            status, used = _state(repo)
            render.out_console().print(
                f"[bold]{role}[/]: {render.escape(repo.id)} @ {render.escape(repo.revision or 'main (not pinned)')}  "
                f"download {_known([repo], detail=True)}, cached: {status}"
                + (f" ({render.human_size(used)})" if used else ""), highlight=False)
            if state.snapshot is not None:
                render.out_console().print(f"  {render.escape(str(state.snapshot))}", highlight=False)
            files = repo.files
            if files is None and state.commit:

                files = tuple(store.FileSpec(p, e.get("size"), e.get("etag") if e.get("lfs") else None)
                              for p, e in sorted(store.recorded_files(repo, state.commit).items()))
            rows = [[f.path, render.human_size(f.size) if f.size is not None else "?",
                     f.sha256[:12] if f.sha256 else "-",
                     "no" if f.path in state.missing else "damaged" if f.path in state.damaged else "yes"]
                    for f in files or ()]
            if rows:
                render.table(["  file", "size", "sha256", "cached"], [["  " + r[0], *r[1:]] for r in rows])


@models_app.command()
def path(name: Name) -> None:
    """Print the folder of each cached part (prior, decoder, inpaint), one per line."""

    with user_errors():
        _, model, repos = store.target(name)
        lines = []
        for role, repo in _parts(model, repos):
            state = store.inspect(repo)
            if state.snapshot is not None:
                lines.append(f"{role}\t{state.snapshot}" if model is not None else str(state.snapshot))
        if not lines:
            raise KandinskyError(store.not_cached_message(store.owner(repos[0]) if model is None else model.name))
        for line in lines:
            typer.echo(line)


@models_app.command()
def verify(name: Name) -> None:
    """Hash every cached file against the hub's checksum; a file that fails is removed (pull fetches it again)."""
    from kcli.cli import render

    with user_errors():
        label, model, repos = store.target(name)
        present = [r for r in repos if store.repo_folder(r.id).is_dir()]
        if not present:
            raise KandinskyError(store.not_cached_message(store.owner(repos[0]) if model is None else model.name))
        checks = []
        with DownloadView(verb="checking", lines=False) as view:
            for repo in present:
                checks += store.verify(repo, view)
        bad = [c for c in checks if not c.ok]
        for c in bad:
            render.err_console().print(f"[red]FAILED[/] {render.escape(f'{c.repo.id}/{c.path}: {c.reason}')}",
                                       highlight=False, soft_wrap=True)
        if bad:
            pulled = model.name if model is not None else store.owner(repos[0])
            damaged = sum(c.reason not in ("missing", "not in the cache") for c in bad)
            what = ("missing" if not damaged else "damaged" if damaged == len(bad) else "missing or damaged")
            removed = (f" ({damaged} failed verification and {'was' if damaged == 1 else 'were'} removed)"
                       if damaged else "")
            raise KandinskyError(f"{len(bad)} of {len(checks)} files of {label} {'is' if len(bad) == 1 else 'are'} "
                                 f"{what}{removed}: {store.pull_hint(pulled)} to fetch them again")
        typer.echo(f"{label}: {len(checks)} files verified")


@models_app.command()
def rm(
    name: Name,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a model from the cache and free its disk space."""
    from kcli.cli import render

    with user_errors():
        label, _, repos = store.target(name)
        used = sum(store.disk_usage(r.id) for r in repos)
        if not any(store.repo_folder(r.id).exists() for r in repos):
            render.info(f"{label} is not in the cache: nothing to remove")
            return
        if not yes and sys.stdin.isatty() and not typer.confirm(f"remove {label} ({render.human_size(used)})?"):
            raise typer.Exit(1)
        freed = sum(store.remove(r.id) for r in repos)
        typer.echo(f"removed {label}: {render.human_size(freed)} freed")
