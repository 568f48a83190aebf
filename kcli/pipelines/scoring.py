"""CLIP scores of pictures against texts with an open_clip model (``kandinsky score``, ``--best-of --scorer
openclip``).

The score is the cosine similarity of the picture's and the text's CLIP embeddings, in [-1, 1] (the
"CLIP score" of papers is usually 100 times this, floored at 0). Pictures are embedded in batches;
each distinct text is embedded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kcli.loading import download
from kcli.models.openclip import DEFAULT, OpenCLIP, locate, pretrained_names
from kcli.pipelines.devices import resolve_device, resolve_dtype
from kcli.pipelines.files import load_image
from kcli.pipelines.pixels import rgb

BATCH = 16


class Scorer:
    def __init__(self, clip: OpenCLIP):
        self.clip = clip

    @classmethod
    def load(cls, name: str = DEFAULT, *, device: str | torch.device = "auto", dtype: str | torch.dtype | None = None,
             offline: bool = False, progress=None) -> Scorer:
        """Fetch the named model into the cache when it comes from the hub (unless offline), then build it."""
        source = locate(name)
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        dt = dtype if isinstance(dtype, torch.dtype) else resolve_dtype(dtype, dev)
        folder = source.folder
        if folder is None:
            folder = download.fetch([source.repo], what=f"CLIP model {source.name}", offline=offline,
                                    progress=progress, hint=lambda repo: f"CLIP model {source.name} is not in the "
                                    "cache: run the command once without --offline")[0]
        return cls(OpenCLIP.load(source, folder, device=dev, dtype=dt))

    @property
    def name(self) -> str:
        return self.clip.name

    def score(self, pictures: Sequence, prompts: Sequence[str], on_progress=None) -> list[float]:
        """One score per (picture, prompt) pair. Pictures are PIL images or paths; paths are read a batch at a
        time, so a folder of thousands takes the memory of one batch."""
        if len(pictures) != len(prompts):
            raise ValueError("one prompt per picture")
        distinct = list(dict.fromkeys(prompts))
        texts = torch.cat([self.clip.texts(distinct[i:i + BATCH]) for i in range(0, len(distinct), BATCH)])
        row = {p: i for i, p in enumerate(distinct)}
        scores: list[float] = []
        for i in range(0, len(pictures), BATCH):
            images = self.clip.images([rgb(p if hasattr(p, "convert") else load_image(p))
                                       for p in pictures[i:i + BATCH]])
            wanted = texts[[row[p] for p in prompts[i:i + BATCH]]]
            scores += (images * wanted).sum(-1).tolist()
            if on_progress:
                on_progress("score", len(scores), len(pictures))
        return scores

    def __call__(self, picture, prompt: str) -> float:
        return self.score([picture], [prompt])[0]


def clip_model_names() -> list[str]:
    """open_clip's ``ARCH/TAG`` names that have a copy on the model hub (``kandinsky score --list-models``)."""
    return pretrained_names()
