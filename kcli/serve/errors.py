"""What a request that goes wrong answers: a status and one line, as ``{"error": "..."}``."""

from __future__ import annotations

from kcli.errors import KandinskyError


class ApiError(KandinskyError):
    """A user error with its HTTP status (a plain ``KandinskyError`` is a 400)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def one_line(error: BaseException) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return first if isinstance(error, KandinskyError) else f"{type(error).__name__}: {first}".rstrip(": ")
