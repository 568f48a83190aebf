"""The error types that reach the user as a one-line message: the bottom of kcli, imported by every layer."""


class KandinskyError(Exception):
    """A problem the user can fix (bad input, missing file, unsupported setting). Shown as one line."""


class CheckpointError(KandinskyError):
    """A checkpoint folder or file that is missing, damaged or does not fit its config."""
