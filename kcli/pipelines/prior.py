"""The prior stage: text -> CLIP text embedding -> prior transformer -> CLIP image embedding.

The 'no negative prompt' embedding is the CLIP image embedding of a zero input. It needs the image
tower (1.8B parameters for 2.2), so it is computed once per checkpoint and dtype and then cached.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kcli.errors import CheckpointError, KandinskyError
from kcli.loading import cache
from kcli.loading.ranges import in_file
from kcli.loading.weights import find_weights, read_json
from kcli.models.clip import CLIPImage, CLIPText
from kcli.models.prior import PriorTransformer, load_prior
from kcli.pipelines.placement import Placement
from kcli.samplers.noise import randn
from kcli.samplers.unclip import UnCLIPSampler, sample_prior


class PriorStage:
    def __init__(self, folder: Path, text: CLIPText, prior: PriorTransformer, sampler: UnCLIPSampler,
                 dtype: torch.dtype, placement: Placement):
        self.folder, self.text, self.prior, self.sampler = folder, text, prior, sampler
        self.dtype, self.placement, self.device = dtype, placement, placement.device
        self._image: CLIPImage | None = None

    @classmethod
    def load(cls, folder: Path, *, dtype: torch.dtype, placement: Placement) -> PriorStage:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"prior {folder} is not a folder")
        config = folder / "scheduler" / "scheduler_config.json"
        with in_file(config):
            sampler = UnCLIPSampler.from_dict(read_json(config))
        prior = placement.attach(load_prior(folder / "prior", dtype=dtype, device=placement.weights_device))
        text = placement.attach_encoder(CLIPText.load(folder, dtype=dtype, device=placement.weights_device))
        return cls(folder, text, prior, sampler, dtype, placement)

    @property
    def image_encoder(self) -> CLIPImage:
        """Loaded on first use: text-to-image needs it only once per checkpoint (see zero_embed)."""
        if self._image is None:
            self._image = self.placement.attach_encoder(self._load_image_encoder())
        return self._image

    def _load_image_encoder(self) -> CLIPImage:
        return CLIPImage.load(self.folder, dtype=self.dtype, device=self.placement.weights_device)

    def zero_embed(self) -> torch.Tensor:
        """(1, D) CLIP embedding of the zero image, from the cache when this checkpoint made it before."""
        enc = self.folder / "image_encoder"
        key = cache.fingerprint(enc / "config.json", find_weights(enc), extra=str(self.dtype))
        emb = cache.load_tensor("zero_embeds", key)
        if emb is None:
            emb = self.compute_zero_embed()
            cache.save_tensor("zero_embeds", key, emb)
        return emb.to(self.device, self.dtype)

    def compute_zero_embed(self) -> torch.Tensor:
        """The zero-image embedding from the image encoder (loaded for it, and let go after, if it was not)."""
        just_for_this = self._image is None
        try:
            with torch.inference_mode(), self.placement.on(self.image_encoder.model):
                return self.image_encoder.zero_embed()
        finally:  # 1.8B parameters for 2.2: give the memory back, failed or not (fuse and vary load it again)
            if just_for_this and self._image is not None:
                self.placement.release(self._image.model)
                self._image = None

    def _encode(self, prompts: list[str], uncond: list[str], cfg: bool):
        embeds, hidden, mask = self.text(prompts)
        if cfg:
            u_embeds, u_hidden, u_mask = self.text(uncond)
            embeds, hidden, mask = (torch.cat([u, c]) for u, c in
                                    ((u_embeds, embeds), (u_hidden, hidden), (u_mask, mask)))
        return embeds, hidden, mask

    @torch.inference_mode()
    def embed(self, prompt: str | list[str], negative: str | None, *, steps: int, guidance: float,
              generator, on_step=None, mode: str = "diffusion", linear=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(image embeddings, negative image embeddings), each (B, D) for B prompts (a list; a str is one).

        Like the reference: a negative prompt is run through the prior as a second row (with itself as
        the unconditional text); without one, the negative is the zero-image embedding.
        Several prompts run as one batch, image i's rows next to each other ([prompt, negative] with a negative),
        ``generator`` then a ``PerImage`` with one generator per prompt: each draws what its single run draws.
        ``mode`` "linear" maps CLIP text embeddings with a fitted ``linear`` prior instead, and "none" uses
        them as they are (the paper's no-prior baseline); neither draws random numbers.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if mode != "diffusion":
            pairs = [self._embed_without_diffusion(p, negative, mode, linear) for p in prompts]
            return torch.cat([e for e, _ in pairs]), torch.cat([n for _, n in pairs])
        rows = prompts if negative is None else [t for p in prompts for t in (p, negative)]
        uncond = [""] * len(rows) if negative is None else [negative] * len(rows)
        cfg = guidance > 1.0
        with self.placement.on(self.text.model, self.prior):
            embeds, hidden, mask = self._encode(rows, uncond, cfg)
            out = sample_prior(self.prior, self.sampler, steps=steps, text_embeds=embeds, hidden_states=hidden,
                               mask=mask, guidance=guidance, generator=generator, batch=len(rows),
                               on_step=on_step)
        if negative is None:
            return out, self.zero_embed().expand(len(prompts), -1)
        return out[0::2], out[1::2]

    @torch.inference_mode()
    def image_embed(self, image) -> torch.Tensor:
        """(1, D) CLIP embedding of a PIL picture (resized to 224 on its short side, center-cropped)."""
        enc = self.image_encoder
        pixels = enc.processor(image, return_tensors="pt").pixel_values
        with self.placement.on(enc.model):
            return enc(pixels).to(self.dtype)

    @torch.inference_mode()
    def mix(self, items: list, weights: list[float], negative: str | None, *, steps: int, guidance: float,
            generator: torch.Generator, on_step=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Weighted sum of embeddings of texts (each a full prior run, in order) and pictures (CLIP image
        embeddings), as the reference's ``interpolate``; returns (mixed (1, D), negative (1, D)).

        The reference ends with one more prior run on the empty text whose result it throws away when there is
        no negative prompt. We draw its random numbers (so later draws stay in step) but skip the work.
        """
        terms = []
        for item, weight in zip(items, weights):
            emb = self.embed(item, negative, steps=steps, guidance=guidance, generator=generator,
                             on_step=on_step)[0] if isinstance(item, str) else self.image_embed(item)
            terms.append((emb * weight)[None])
        mixed = torch.cat(terms).sum(dim=0)
        if negative is not None:  # the empty text and the negative, run together; the negative's embedding
            return mixed, self.embed("", negative, steps=steps, guidance=guidance, generator=generator)[1]
        self.skip_run(generator, rows=1, steps=steps)
        return mixed, self.zero_embed()

    def skip_run(self, generator: torch.Generator, *, rows: int, steps: int) -> None:
        """Advance ``generator`` exactly as a prior run of ``rows`` rows would: initial latents, then one draw
        per step that adds noise (every step with t > 0)."""
        draws = 1 + sum(t > 0 for t in self.sampler.timesteps(steps))
        for _ in range(draws):
            randn((rows, self.prior.config.embedding_dim), generator, "cpu", self.dtype)

    def _embed_without_diffusion(self, prompt: str, negative: str | None, mode: str, linear):
        if mode not in ("linear", "none"):
            raise KandinskyError(f"unknown prior mode {mode!r}: use diffusion, linear or none")
        if mode == "linear" and linear is None:
            raise KandinskyError("--prior-mode linear needs --linear-prior FILE (make one with `kandinsky prior fit`)")
        with self.placement.on(self.text.model):
            texts = [prompt] + ([negative] if negative is not None else [])
            embeds = self.text(texts)[0].to(self.dtype)
        if linear is not None and mode == "linear":
            if linear.weight.shape[1] != embeds.shape[1]:
                raise KandinskyError(f"the linear prior maps {linear.weight.shape[1]}-d text embeddings, this prior's "
                                     f"CLIP makes {embeds.shape[1]}-d ones")
            embeds = linear(embeds.float()).to(self.dtype)
        image = embeds[:1]
        return image, embeds[1:2] if negative is not None else self.zero_embed()

    @torch.inference_mode()
    def pair_embeddings(self, captions: list[str], images: list) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP text embeddings of ``captions`` and CLIP image embeddings of ``images`` (for a linear prior)."""
        with self.placement.on(self.text.model):
            text = self.text(captions)[0].float()
        image = torch.cat([self.image_embed(i) for i in images]).float()
        return text, image

    @torch.inference_mode()
    def clip_score(self, image, prompt: str) -> float:
        """Cosine similarity of a picture's and a text's CLIP embeddings, with this prior's own CLIP."""
        with self.placement.on(self.text.model):
            text = self.text([prompt])[0].float()
        picture = self.image_embed(image).float()
        return float(torch.nn.functional.cosine_similarity(picture, text).item())
