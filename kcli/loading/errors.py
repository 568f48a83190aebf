"""Moved to ``kcli.errors`` (the bottom layer). Kept only so that branches written before the move still
import; new code imports ``kcli.errors``."""

from kcli.errors import CheckpointError, KandinskyError  # noqa: F401
