"""The error types that reach the user as a one-line message: the bottom of kcli, imported by every layer."""


class KandinskyError(Exception):
    """A problem the user can fix (bad input, missing file, unsupported setting). Shown as one line."""


class CheckpointError(KandinskyError):
    """A checkpoint folder or file that is missing, damaged or does not fit its config."""


class OutOfDeviceMemory(KandinskyError):
    """The GPU ran out of memory during a job. What the job put on the device was given back, so the next job
    (smaller, or at a lower level) can run."""

    HINT = "try a lower --memory level (balanced, low or min), a smaller size, or fewer images"

    def __init__(self):
        super().__init__(f"out of GPU memory: {self.HINT}")
