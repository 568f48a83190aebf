"""How a command ends when something goes wrong: one line on stderr and a meaningful exit code."""

from __future__ import annotations

import contextlib
import os
import sys

import typer

EXIT_ERROR = 1  # a user error: bad input, missing file, unusable checkpoint
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    from kcli.cli.render import err_console, escape

    err_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors():
    """Turn our errors, Ctrl-C and unexpected failures into one line and an exit code, never a traceback."""
    from kcli.errors import KandinskyError, OutOfDeviceMemory

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except KandinskyError as e:
        kept = "; finished images were kept" if isinstance(e, OutOfDeviceMemory) else ""
        raise fail(f"{e}{kept}") from None
    except KeyboardInterrupt:
        raise fail("interrupted: finished images were kept", EXIT_INTERRUPTED) from None
    except BrokenPipeError:  # stdout closed early (`kandinsky score --list-models | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    except MemoryError:
        raise fail("out of memory (RAM): try a smaller size, --dtype bf16, or fewer images") from None
    except Exception as e:  # a bug: still one line, with a way to see the traceback
        if type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (loading), without importing torch here
            raise fail(f"{OutOfDeviceMemory()}; finished images were kept") from None
        if os.environ.get("KANDINSKY_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise fail(f"internal error: {type(e).__name__}: {first} (set KANDINSKY_DEBUG=1 for the traceback)") from None
    finally:
        sys.stderr.flush()
