"""``--resume``: which jobs of a batch already have their images in the output folder.

An index, built once per run from the metadata of the folder's pictures: PNG text chunks, the EXIF of JPEG
and WebP, never their pixels (``metadata.read``), so a folder of thousands of images is read in about a
second. An image of a job is there when a picture records the very settings that shape it:
the mode, every setting the schema marks ``recorded`` (prompt, negative, seed, size, steps, guidance, sampler,
prior steps and guidance, prior mode, strength, input pictures ...), the sha256 of each input picture where
the images record one, and the model, checkpoints and precision loaded. Settings the run leaves to the
pipeline (a size taken from the input picture, the default model's name) are not compared. A job with some of
its images there (``-n 8`` stopped after five) makes only the others (``remaining``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from kcli.errors import KandinskyError
from kcli.pipelines import imagemeta as metadata
from kcli.pipelines.files import file_sha256
from kcli.pipelines.imagemeta import IMAGE_SUFFIXES
from kcli.pipelines.requests import DEFAULT_SIZE, Request
from kcli.pipelines.settings import RECORDED_ONLY, Loading, record, recorded_names, settings_of, spec_of

HASHED = "_sha256"  # a recorded-only setting NAME_sha256 holds the hash of the file the setting NAME names


class Index:
    """The images of one folder by (mode, prompt), each with what it records."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.made: dict[tuple[str, str], list[tuple[dict, Path]]] = {}
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                continue
            try:
                meta = metadata.read(path)
                settings = meta.get("settings")
                key = (meta.get("mode"), settings.get("prompt"))
                hash(key)
            except (KandinskyError, AttributeError, TypeError):  # not ours, damaged, or not a dict
                continue
            self.made.setdefault(key, []).append((meta, path))

    def find(self, request: Request, loaded: dict) -> list[Path | None]:
        """For each image of ``request`` (seeded) the picture in the folder that it would make, or None.
        ``loaded``: the run's loading settings by name (model, prior, decoder, dtype)."""
        want = _wanted(request)
        load = {k: loaded.get(k) for k in recorded_names(Loading) if loaded.get(k) is not None}
        n = request.best_of
        made = self.made.get((request.mode, request.label), [])
        return [next((path for meta, path in made  # with best_of N, the winner is one of N candidates
                      if meta["settings"].get("seed") in range(first, first + n) and _best_of(meta) == n
                      and _same(meta, want, load)), None)
                for first in request.image_seeds()]


def remaining(request: Request, found: list[Path | None]) -> tuple[Request, slice]:
    """What is left of a request when ``--resume`` found some of its images: the images from the first missing
    one to the last, as a request of their own, and which of the request's images (file names) those are. Image
    i draws only from its own seed, S + i x best_of, so they come out as the whole run would have made them."""
    missing = [i for i, path in enumerate(found) if path is None]
    first, last = missing[0], missing[-1]
    seed = request.image_seeds()[first]
    return dataclasses.replace(request, seed=seed, num_images=last - first + 1), slice(first, last + 1)


def _wanted(request: Request) -> dict:
    """What the images of ``request`` must record: its recorded settings and inputs, the seed aside; a size
    left to the pipeline made concrete where it does not depend on an input picture; input files' hashes."""
    wanted = record(request)
    settings, inputs = wanted["settings"], wanted["inputs"]
    settings.pop("seed", None)
    if not request.sized_by_input:
        for side in ("width", "height"):
            settings[side] = settings.get(side) or DEFAULT_SIZE
    else:
        for side in ("width", "height"):
            if settings.get(side) is None:
                settings.pop(side, None)
    for f in settings_of(type(request)):
        spec = spec_of(f)
        if spec.recorded and spec.commands == RECORDED_ONLY and f.name.endswith(HASHED):
            source = getattr(request, f.name.removesuffix(HASHED), None)
            if isinstance(source, (str, Path)) and Path(source).is_file():
                inputs[f.name] = file_sha256(source)
    return wanted


def _same(meta: dict, want: dict, load: dict) -> bool:
    settings, inputs = meta.get("settings") or {}, meta.get("inputs") or {}
    recorded_load = meta.get("load") or {}
    if not all(isinstance(d, dict) for d in (settings, inputs, recorded_load)):
        return False
    return (all(settings.get(k) == v for k, v in want["settings"].items())
            and all(inputs.get(k) == v for k, v in want["inputs"].items())
            and all(recorded_load.get(k) == v for k, v in load.items()))


def _best_of(meta: dict) -> int:
    score = meta.get("score")
    return score.get("best_of", 1) if isinstance(score, dict) else 1
