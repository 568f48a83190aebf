"""The decoder's denoising loop and classifier-free guidance, as plain functions.

``model(x, t)`` returns the UNet output for a batch whose conditioning is already arranged
``[unconditional; conditional]`` when guidance is on. Guidance runs both halves in one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def guide(out: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """Combine a doubled batch (uncond, cond): noise ``u + s (c - u)``; learned variance from the cond half."""
    uncond, cond = out.chunk(2)
    eps = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
    return torch.cat([eps, cond[:, channels:]], dim=1)


def denoise(model: Callable, sampler, x: torch.Tensor, timesteps: list[int], *, guidance: float,
            generator: torch.Generator, on_step: Callable[[int, int], None] | None = None,
            after_step: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Run the sampler over ``timesteps`` from latents ``x`` (B, C, h, w).

    ``after_step(i, x)`` may replace the latents after step i (inpainting re-imposes the known region).
    """
    c = x.shape[1]
    cfg = guidance > 1.0
    for i, t in enumerate(timesteps):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        t_in = torch.tensor(t, device=x.device)
        x_in = sampler.scale_input(x, t)  # what the UNet was trained on (Euler scales; the others do not)
        out = model(torch.cat([x_in, x_in]) if cfg else x_in, t_in)  # (B or 2B, 2C, h, w): noise, learned variance
        if cfg:
            out = guide(out, guidance, c)
        eps, variance = out[:, :c], out[:, c:]
        x = sampler.step(eps, t, t_prev, x, generator, variance=variance if sampler.uses_variance_channels else None)
        if after_step is not None:
            x = after_step(i, x)
        if on_step is not None:
            on_step(i + 1, len(timesteps))
    return x
