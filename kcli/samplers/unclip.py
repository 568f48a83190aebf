"""The prior's sampler (karlo's modified DDPM for an x0-predicting model) and the prior's denoising loop.

Matches diffusers' ``UnCLIPScheduler`` with ``prediction_type="sample"``, ``variance_type="fixed_small_log"``
and the cosine schedule, and the loop of ``KandinskyV22PriorPipeline.__call__`` (also used by the 2.1 prior
pipeline): the same timesteps, float32 coefficients, noise draws (shape, dtype, order) and guidance.

References:
* Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models" (arXiv 2102.09672): cosine schedule.
* Ramesh et al., unCLIP (arXiv 2204.06125); kakaobrain/karlo's sampler.
* diffusers ``schedulers/scheduling_unclip.py``, ``pipelines/kandinsky2_2/pipeline_kandinsky2_2_prior.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from kcli.errors import CheckpointError
from kcli.loading.ranges import check, count, real
from kcli.samplers.noise import randn
from kcli.samplers.schedule import cosine_betas

# The only values the Kandinsky priors use (with diffusers' defaults for omitted keys).
FIXED = (("variance_type", "fixed_small_log", "fixed_small_log"),
         ("prediction_type", "sample", "epsilon"),
         ("beta_schedule", "squaredcos_cap_v2", "squaredcos_cap_v2"))


@dataclass(frozen=True)
class UnCLIPConfig:
    num_train_timesteps: int = 1000
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    RANGES: ClassVar[dict] = {  # sane ranges of scheduler_config.json's numbers (kcli.loading.ranges)
        "num_train_timesteps": count(2, 100_000), "clip_sample_range": real(1e-6, 1e6)}

    @classmethod
    def from_dict(cls, d: dict) -> UnCLIPConfig:
        """Translate a scheduler/scheduler_config.json; omitted keys take UnCLIPScheduler's defaults."""
        check(d, cls.RANGES, "prior scheduler")
        for key, want, default in FIXED:
            if d.get(key, default) != want:
                raise CheckpointError(f"prior scheduler: {key}={d.get(key, default)!r} is not supported "
                                      f"(needs {want!r})")
        T, clip = d.get("num_train_timesteps", 1000), d.get("clip_sample", True)
        r = d.get("clip_sample_range", 1.0)
        if not isinstance(clip, bool):
            raise CheckpointError(f"prior scheduler: clip_sample={clip!r} is not true/false")
        return cls(num_train_timesteps=T, clip_sample=clip, clip_sample_range=float(r))


class UnCLIPSampler:
    def __init__(self, cfg: UnCLIPConfig):
        self.cfg = cfg
        self.betas = cosine_betas(cfg.num_train_timesteps)  # (T,) float32 on CPU
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)

    @classmethod
    def from_dict(cls, d: dict) -> UnCLIPSampler:
        return cls(UnCLIPConfig.from_dict(d))

    def timesteps(self, n: int) -> list[int]:
        """``round(arange(n) * (T-1)/(n-1))`` descending (numpy's half-to-even), so the last one is 0.

        ``n == 1`` (where diffusers divides by zero) gives ``[T-1]``: one x0 prediction from pure noise,
        which ``sample_prior`` then steps straight to the clean sample (prev_t = -1).
        """
        T = self.cfg.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"prior steps must be between 1 and {T}, got {n}")
        if n == 1:
            return [T - 1]
        return [int(t) for t in (np.arange(n) * ((T - 1) / (n - 1))).round()[::-1]]

    def step(self, x0_pred: torch.Tensor, t: int, prev_t: int | None, x_t: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
        """x_t -> x_{prev_t}; ``prev_t`` None means t-1, -1 means the clean sample. Draws noise iff t > 0."""
        t = int(t)
        prev_t = t - 1 if prev_t is None else int(prev_t)
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        if prev_t == t - 1:  # the training table
            beta, alpha = self.betas[t], self.alphas[t]
        else:  # the beta of the skipped-over interval
            beta = 1 - a_t / a_prev
            alpha = 1 - beta
        r = self.cfg.clip_sample_range
        x0 = x0_pred.clamp(-r, r) if self.cfg.clip_sample else x0_pred
        # the posterior mean, with 0-dim float32 coefficients as diffusers computes them
        x = (a_prev**0.5 * beta) / (1 - a_t) * x0 + alpha**0.5 * (1 - a_prev) / (1 - a_t) * x_t
        if t > 0:
            noise = randn(x0_pred.shape, generator, x0_pred.device, x0_pred.dtype)
            sigma = torch.exp(0.5 * torch.log(torch.clamp((1 - a_prev) / (1 - a_t) * beta, min=1e-20)))
            x = x + sigma * noise
        return x


@torch.no_grad()
def sample_prior(
    model,
    sampler: UnCLIPSampler,
    *,
    steps: int,
    text_embeds: torch.Tensor,  # (R, D) CLIP text embeddings; R = 2*batch ([uncond; cond]) if guidance > 1
    hidden_states: torch.Tensor,  # (R, 77, D) CLIP last hidden states
    mask: torch.Tensor,  # (R, 77) bool token mask
    guidance: float,
    generator: torch.Generator | None,
    batch: int,
    on_step: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """CLIP image embeddings (batch, D) for the encoded text, as ``KandinskyV22PriorPipeline`` makes them.

    ``on_step(i, n)`` is called after each step with i = steps done (1..n).
    """
    cfg = guidance > 1
    x = randn((batch, model.config.embedding_dim), generator, text_embeds.device, text_embeds.dtype)
    ts = sampler.timesteps(steps)
    for i, t in enumerate(ts):
        pred = model(torch.cat([x, x]) if cfg else x, t, text_embeds, hidden_states, mask)
        if cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + guidance * (cond - uncond)
        prev_t = ts[i + 1] if i + 1 < len(ts) else -1  # -1 == diffusers' None whenever the last t is 0
        x = sampler.step(pred, t, prev_t, x, generator)
        if on_step is not None:
            on_step(i + 1, len(ts))
    return model.post_process(x)
