"""How commands end on failures that are not bad input: one line, a meaningful exit code, no traceback."""

import pytest
import typer

from kcli.cli.errors import EXIT_INTERRUPTED, user_errors


class OutOfMemoryError(RuntimeError):  # stands in for torch.cuda.OutOfMemoryError (same name, same base)
    pass


@pytest.mark.parametrize("exc,code,expect", [
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), 1, "lower --memory level"),
    (MemoryError(), 1, "out of memory (RAM)"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted: finished images were kept"),
    (ZeroDivisionError("division by zero"), 1, "internal error: ZeroDivisionError"),
])
def test_failures_end_in_one_line(capsys, exc, code, expect):
    with pytest.raises(typer.Exit) as ended:
        with user_errors():
            raise exc
    assert ended.value.exit_code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and expect in err[0], err
