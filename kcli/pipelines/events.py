"""What a pipeline tells its caller while it works. The library never prints: a front end passes an object
with these methods (any it lacks are skipped) and draws what it hears.

    downloads   planned(what, files, todo, cached, folder), started(name, size, done), advanced(name, done),
                finished(name)                       (the protocol of kcli.loading.download.Progress)
    work        note(message)                        a decision worth telling: memory level, size, canvas, seed
                image(index, count, seed, candidate) an image starts; candidate = (j, n) under best_of
                progress(stage, done, total)         stages: load, prior, decoder, decode, score
"""

from __future__ import annotations


class Events:
    """Does nothing: the default listener, and a base for listeners that want only some events."""

    def planned(self, what: str, files: int, todo: int, cached: int, folder) -> None: ...

    def started(self, name: str, size: int, done: int) -> None: ...

    def advanced(self, name: str, done: int) -> None: ...

    def finished(self, name: str) -> None: ...

    def note(self, message: str) -> None: ...

    def image(self, index: int, count: int, seed: int, candidate: tuple[int, int] | None = None) -> None: ...

    def progress(self, stage: str, done: int, total: int) -> None: ...


class Relay(Events):
    """Forwards to ``listener``'s methods where it has them (so a listener may implement only a few)."""

    def __init__(self, listener=None):
        self.listener = listener

    def _call(self, name: str, *args) -> None:
        method = getattr(self.listener, name, None)
        if method is not None:
            method(*args)

    def planned(self, *a) -> None:
        self._call("planned", *a)

    def started(self, *a) -> None:
        self._call("started", *a)

    def advanced(self, *a) -> None:
        self._call("advanced", *a)

    def finished(self, *a) -> None:
        self._call("finished", *a)

    def note(self, *a) -> None:
        self._call("note", *a)

    def image(self, *a) -> None:
        self._call("image", *a)

    def progress(self, *a) -> None:
        self._call("progress", *a)
